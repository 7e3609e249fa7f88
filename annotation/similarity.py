"""Query by example: the one entry point the acquisition pages call for similar images.

The annotation app must not import the retrieval app's internals (DESIGN.md section 2), and the
archive index (deep hashing + two-stage search, section 5) is built by another issue. So this
module is a thin delegate: ``settings.VIVA_SIMILARITY_BACKEND`` names (dotted path) an object —
a module, a class (instantiated once without arguments) or an instance — that provides

* ``similar_images(query_images, k) -> list[tuple[int, float]]`` and
* ``index_status() -> tuple[bool, str]``.

Without a backend, or while the backend says its index is not built, :func:`similar_images`
raises :class:`IndexNotBuilt`. There are deliberately no fake results: a page that showed random
archive images as "similar" would teach annotators to distrust the tool, and labels collected
from such a page would poison the training data.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from PIL import Image as PILImage

__all__ = [
    "DEFAULT_K",
    "MAX_K",
    "NOT_BUILT_MESSAGE",
    "IndexNotBuilt",
    "SimilarityBackend",
    "SimilarityError",
    "get_backend",
    "index_status",
    "reset_backend",
    "similar_images",
]

DEFAULT_K = 100
MAX_K = 1000

NOT_BUILT_MESSAGE = (
    "The archive's similarity index is not built yet, so similar images cannot be searched. "
    "It is created when the archive's keyframes are indexed (hash codes for every keyframe); "
    "ask a trainer or an administrator to build it. Until then, use the web search, "
    "upload / URL or the sequence import to collect images."
)

Query = Sequence[PILImage.Image] | Sequence[int]


class SimilarityError(Exception):
    """A similarity query could not be answered; the message is meant for the user."""


class IndexNotBuilt(SimilarityError):
    """There is no archive index to search (yet)."""

    def __init__(self, message: str = NOT_BUILT_MESSAGE) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@runtime_checkable
class SimilarityBackend(Protocol):
    """What ``VIVA_SIMILARITY_BACKEND`` must provide (see the module docstring).

    ``similar_images`` receives either decoded query images or ids of archive images (the
    positives of a category: "find more like these") and returns up to ``k`` pairs
    ``(image_id, distance)``, nearest first. It raises :class:`IndexNotBuilt` while there is
    no index, and :class:`SimilarityError` for other problems the user should read.
    """

    def similar_images(self, query_images: Query, k: int) -> list[tuple[int, float]]: ...

    def index_status(self) -> tuple[bool, str]: ...


_lock = threading.Lock()
_cache: dict[str, Any] = {}


def get_backend() -> SimilarityBackend | None:
    """The configured backend, loaded once per process (``None`` when none is configured).

    Loaded lazily and cached because a real backend holds an index in memory; reloading it
    per request was one of the original VIVA's defects (models reloaded on every request).
    """
    path = getattr(settings, "VIVA_SIMILARITY_BACKEND", None)
    if not path:
        return None
    with _lock:
        backend = _cache.get(path)
        if backend is None:
            try:
                backend = import_string(path)
            except ImportError as exc:
                raise ImproperlyConfigured(
                    f"VIVA_SIMILARITY_BACKEND = {path!r} cannot be imported: {exc}"
                ) from exc
            if isinstance(backend, type):
                backend = backend()
            if not callable(getattr(backend, "similar_images", None)):
                raise ImproperlyConfigured(
                    f"VIVA_SIMILARITY_BACKEND = {path!r} has no similar_images() function."
                )
            _cache[path] = backend
    return backend


def reset_backend() -> None:
    """Forget loaded backends (tests, or after the index was rebuilt in this process)."""
    with _lock:
        _cache.clear()


def index_status() -> tuple[bool, str]:
    """``(built, message)``: whether queries can be answered, and a sentence for the page."""
    backend = get_backend()
    if backend is None:
        return False, NOT_BUILT_MESSAGE
    status = getattr(backend, "index_status", None)
    if status is None:
        return True, "The archive's similarity index is ready."
    built, message = status()
    return bool(built), str(message or (NOT_BUILT_MESSAGE if not built else ""))


def similar_images(query_images: Query, k: int = DEFAULT_K) -> list[tuple[int, float]]:
    """The ``k`` archive images nearest to the query, as ``(image_id, distance)`` pairs.

    ``query_images`` is a list of PIL images (upload / URL) or a list of image ids (the
    positives of a category). Several query images are one query ("more like these"); how
    they are combined is the backend's business. Raises :class:`IndexNotBuilt` until an
    index exists, :class:`SimilarityError` for other user-facing problems, ``ValueError`` for
    an empty query or a bad ``k``.
    """
    query = list(query_images)
    if not query:
        raise ValueError("A similarity query needs at least one image.")
    if not all(isinstance(q, PILImage.Image) for q in query) and not all(
        isinstance(q, int) and not isinstance(q, bool) for q in query
    ):
        raise ValueError("Query with PIL images or with image ids, not a mixture.")
    k = int(k)
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}.")
    backend = get_backend()
    if backend is None:
        raise IndexNotBuilt()
    built, message = index_status()
    if not built:
        raise IndexNotBuilt(message)
    results = backend.similar_images(query, k)
    return [(int(image_id), float(distance)) for image_id, distance in list(results)[:k]]
