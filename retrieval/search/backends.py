"""Which index backend holds the codes of a hashing model version, from the settings.

``VIVA_SEARCH_BACKEND`` chooses FAISS (files under ``VIVA_INDEX_DIR/images/<version pk>``,
the embedded default) or Elasticsearch / OpenSearch (per version an index and an alias
named ``VIVA_ES_INDEX-v<pk>`` and ``VIVA_ES_ALIAS-v<pk>``, the scale-out stack; DESIGN.md
section 3). One index object per version and process is kept, because a FAISS index lives
in memory and loading it per request would cost seconds on a large archive (it reloads
itself when the indexing job wrote new files).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:  # pragma: no cover
    from training.models import ModelVersion

    from .base import CodeIndex

BACKENDS = ("faiss", "elasticsearch")
BACKEND_LABELS = {"faiss": "FAISS (files on this server)", "elasticsearch": "Elasticsearch"}

_lock = threading.Lock()
_cache: dict[tuple[str, int], Any] = {}


def backend_name() -> str:
    """The configured backend, validated (a typo must not silently fall back to FAISS)."""
    name = str(getattr(settings, "VIVA_SEARCH_BACKEND", "faiss") or "faiss").strip().lower()
    if name in ("es", "opensearch"):
        name = "elasticsearch"
    if name not in BACKENDS:
        raise ImproperlyConfigured(
            f"VIVA_SEARCH_BACKEND = {name!r}; use one of {', '.join(BACKENDS)}."
        )
    return name


def backend_label() -> str:
    name = backend_name()
    if name == "elasticsearch":
        from .elastic import public_url

        return f"Elasticsearch at {public_url(settings.VIVA_ES_URL)}"
    return BACKEND_LABELS[name]


def faiss_directory(version: ModelVersion) -> Path:
    return Path(settings.VIVA_INDEX_DIR) / "images" / str(version.pk)


def es_names(version: ModelVersion) -> tuple[str, str]:
    """``(index, alias)`` of a hashing model version in Elasticsearch: the configured names
    with a version suffix, so a new model's codes never mix with the old ones (the backend
    reads and writes through the alias; a rebuild moves the alias to a fresh index)."""
    return f"{settings.VIVA_ES_INDEX}-v{version.pk}", f"{settings.VIVA_ES_ALIAS}-v{version.pk}"


def _open(version: ModelVersion, name: str) -> CodeIndex:
    if name == "faiss":
        from .faiss_index import FaissCodeIndex

        return FaissCodeIndex(faiss_directory(version))
    from .elastic import ElasticCodeIndex

    index, alias = es_names(version)
    return ElasticCodeIndex(url=settings.VIVA_ES_URL, index=index, alias=alias)


def get_index(version: ModelVersion, *, fresh: bool = False) -> CodeIndex:
    """The code index of ``version`` in the configured backend (opened once per process;
    the FAISS index reloads itself when another process wrote its files).

    ``fresh=True`` opens a new object (the indexing job, which writes). Raises
    ``IndexUnavailable`` when the backend cannot be reached or read.
    """
    name = backend_name()
    if fresh:
        return _open(version, name)
    key = (name, version.pk)
    with _lock:
        index = _cache.get(key)
        if index is None:
            index = _open(version, name)
            _cache[key] = index
        return index


def forget(version: ModelVersion | None = None) -> None:
    """Drop cached indexes (tests; or after this process rebuilt an index)."""
    with _lock:
        for key in list(_cache):
            if version is None or key[1] == version.pk:
                del _cache[key]
