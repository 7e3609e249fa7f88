"""Registry of job kinds → handler functions and the queue they run on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class JobError(Exception):
    """A failure with a message meant for the user (shown as the job's error)."""


@dataclass(frozen=True)
class JobKind:
    name: str
    handler: Callable[..., dict[str, Any] | None]
    queue: str
    label: str


_KINDS: dict[str, JobKind] = {}


def job_handler(name: str, *, queue: str = "default", label: str = ""):
    """Register ``fn(ctx: JobContext) -> dict | None`` as the handler of job kind ``name``.

    Handlers must be idempotent: a job may be resumed after a crash or delivered twice,
    so they skip work that is already done instead of repeating it.
    """

    def decorate(fn):
        _KINDS[name] = JobKind(name, fn, queue, label or name.replace("_", " "))
        return fn

    return decorate


def get_kind(name: str) -> JobKind:
    _ensure_loaded()
    try:
        return _KINDS[name]
    except KeyError:
        raise JobError(f"Unknown job kind {name!r}.") from None


def all_kinds() -> dict[str, JobKind]:
    _ensure_loaded()
    return dict(_KINDS)


def _ensure_loaded() -> None:
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("job_handlers")
