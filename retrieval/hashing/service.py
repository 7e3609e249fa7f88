"""What the "Hash codes" page and the management command call (torch-free).

Starting refuses — with a message and without creating a job — when another hashing job
is still queued or running (two would race to become the active model), when the device
does not exist or is busy, when the backbone could not get its weights, or when options
are bad. The long work happens in the jobs of :mod:`.jobs`.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q

from training.devices import busy_job, device_exists, normalize_device
from training.errors import TrainingRefused
from training.models import ModelVersion
from training.network_specs import get_spec
from training.services import check_start_weights
from viva.jobs import start_job
from viva.models import Job

from .jobs import FIT_JOB, TRAIN_JOB
from .options import HashingOptions, default_network

JOB_KINDS = (FIT_JOB, TRAIN_JOB)
DEFAULT_MIN_POSITIVES = 20


class HashingRefused(TrainingRefused):
    """A hashing job was not started; the message is meant for the user."""


def hashing_jobs(limit: int = 10):
    return (
        Job.objects.filter(kind__in=JOB_KINDS)
        .select_related("created_by")
        .order_by("-created_at")[:limit]
    )


def running_job() -> Job | None:
    return Job.objects.filter(kind__in=JOB_KINDS, status__in=Job.ACTIVE).first()


def random_allowed() -> bool:
    """Whether a hashing backbone may start from random weights (tests, demo); the one
    definition, also used by :mod:`.features`."""
    return bool(getattr(settings, "VIVA_HASHING_ALLOW_RANDOM", False))


def check_weights(network: str, init: str) -> None:
    """Refuse a start that could only fail for want of backbone weights. Random
    initialisation must be asked for (``init="random"``), or allowed as a fallback by
    ``VIVA_HASHING_ALLOW_RANDOM`` (tests, demo)."""
    try:
        get_spec(network)
    except ValueError as exc:
        raise HashingRefused(str(exc)) from exc
    if init not in ("pretrained", "random"):
        raise HashingRefused(f"Unknown start {init!r}: choose ImageNet weights or random.")
    try:
        check_start_weights(network, init)
    except TrainingRefused as exc:
        if not random_allowed():
            raise HashingRefused(
                f"{exc} (Random initialisation as a fallback is allowed only with "
                "VIVA_HASHING_ALLOW_RANDOM, for tests and demos.)"
            ) from exc


def _start(kind: str, params: dict, user, title: str) -> Job:
    device = normalize_device(params.get("device") or "cpu")
    if not device_exists(device):
        raise HashingRefused(
            f"The device {device} is not available (any more); reload the page and choose "
            "another one."
        )
    params = {**params, "device": device}
    with transaction.atomic():
        other = running_job()
        if other is not None:
            raise HashingRefused(
                f"Another hashing job is still {other.get_status_display().lower()} "
                f"(“{other}”, job {other.pk}); wait for it to finish or cancel it."
            )
        holder = busy_job(device)
        if holder is not None:
            raise HashingRefused(
                f"{device} is busy with “{holder}” (job {holder.pk}); wait for it or choose "
                "another device."
            )
        job = start_job(kind, params, user=user, title=title)
        Job.objects.filter(pk=job.pk).update(device=device)
        job.device = device
    return job


def start_fit(user, options: dict) -> Job:
    """Enqueue unsupervised (ITQ) hash codes: ``sample_size``, ``network``, ``init``,
    ``image_size``, ``device``, ``batch_size``."""
    params = {k: v for k, v in options.items() if v not in (None, "")}
    params.setdefault("network", default_network())
    params.setdefault("init", "pretrained")
    sample = int(params.get("sample_size", 20000))
    if not 2 <= sample <= 10_000_000:
        raise HashingRefused("The sample size must be between 2 and 10,000,000 images.")
    check_weights(params["network"], params["init"])
    return _start(FIT_JOB, params, user, f"Hash codes (ITQ, sample of up to {sample} images)")


def category_choices(min_positives: int = DEFAULT_MIN_POSITIVES) -> list[dict]:
    """Concept categories with their positive counts, for the deep hashing form."""
    from annotation.models import Category, Label

    rows = (
        Category.objects.filter(kind=Category.Kind.CONCEPT)
        .annotate(
            positives=Count(
                "annotations",
                filter=Q(annotations__value=Label.POSITIVE, annotations__face__isnull=True),
            )
        )
        .order_by("name")
        .values("id", "name", "positives")
    )
    return [{**r, "eligible": r["positives"] >= min_positives} for r in rows]


def start_deep(user, options: dict) -> Job:
    """Enqueue deep hashing training from labelled categories (``category_ids``; empty:
    every concept with enough positives) or an image folder (``folder``)."""
    params = {k: v for k, v in options.items() if v not in (None, "", [])}
    params.setdefault("network", default_network())
    params.setdefault("init", "pretrained")
    min_pos = int(params.get("min_positives", DEFAULT_MIN_POSITIVES))
    if params.get("folder"):
        if not Path(params["folder"]).is_dir():
            raise HashingRefused(f"The dataset folder {params['folder']} does not exist here.")
    else:
        ids = [int(c) for c in params.get("category_ids") or []]
        usable = [
            c for c in category_choices(min_pos) if c["eligible"] and (not ids or c["id"] in ids)
        ]
        if len(usable) < 2:
            raise HashingRefused(
                f"Deep hashing needs at least 2 concepts with {min_pos} or more positive "
                f"images; {'of the chosen ones ' if ids else ''}{len(usable)} "
                f"{'has' if len(usable) == 1 else 'have'} that many. Label more images or "
                "lower the minimum."
            )
        params["category_ids"] = ids or [c["id"] for c in usable]
    try:
        HashingOptions.from_options(
            {k: v for k, v in params.items() if k not in ("category_ids", "folder")}
        )
    except (TypeError, ValueError) as exc:
        raise HashingRefused(str(exc)) from exc
    check_weights(params["network"], params["init"])
    return _start(TRAIN_JOB, params, user, "Deep hashing training")


def active_hashing_version() -> ModelVersion | None:
    """The active hashing model (one definition: the similarity search's)."""
    from ..search.service import active_version

    return active_version()


def list_hashing_versions():
    """Newest first."""
    return ModelVersion.objects.filter(kind=ModelVersion.Kind.HASHING).order_by("-version")
