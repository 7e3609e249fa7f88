"""Query by example (issue 6): the object ``VIVA_SIMILARITY_BACKEND`` names.

The acquisition pages call :func:`similar_images` and :func:`index_status` through
:mod:`annotation.similarity`; the researcher page and the API call :func:`search` and
:func:`status`, which add the "archive keyframes only" filter and the details of the
status box.

A query is encoded with the active hashing model (thesis 4.2.3: 256-bit codes, permuted so
the first 64 bits are the coarse code) and sent to the configured index backend. Image ids
use their stored codes, so "more like these" over 200 positives costs no forward pass;
an image without a code yet is encoded from its file. Several query images are one query:
one search per code, merged by the minimum distance, because an image is "like these" when
it is like any one of them. The query images themselves are never part of the results.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

from annotation.similarity import IndexNotBuilt, SimilarityError
from training.models import ModelVersion
from viva.media import media_path
from viva.models import Image, Job

from . import backends
from .base import IndexUnavailable, check_codes

JOB_KIND = "index_images"
FIT_JOB_KIND = "fit_hash_codes"
# Keyframe filtering happens after the search, so more results than asked are fetched;
# never more than this many per query code.
MAX_FETCH = 5000

NO_MODEL_MESSAGE = (
    "The archive's similarity index is not built yet: there is no hash-code model. "
    "A trainer can build it from the similarity search page (or fit hash codes on the "
    "“Hash codes” page), which computes a 256-bit code for every archive image."
)


@dataclass
class IndexStatus:
    """What the status boxes show; ``built`` means queries can be answered."""

    built: bool
    message: str
    version: ModelVersion | None = None
    backend: str = ""
    n_codes: int = 0
    n_images: int = 0
    n_index: int | None = None
    backend_error: str = ""
    job: Job | None = None

    @property
    def job_active(self) -> bool:
        return bool(self.job and self.job.is_active)


def active_version() -> ModelVersion | None:
    """The active hashing model; its codes are the ones searched."""
    return ModelVersion.objects.filter(kind=ModelVersion.Kind.HASHING, is_active=True).first()


INDEX_BUILDING_MESSAGE = (
    "The similarity index for the new hashing model v{version} is being built: no image "
    "has been indexed with it yet. Try again in a few minutes (the jobs page shows the "
    "progress)."
)


def searchable_version() -> ModelVersion | None:
    """The hashing model whose codes a query is run against: the active one once a full
    indexing run of it has finished; until then the newest earlier model whose index is
    complete (so a new model does not make search return nothing or a partial answer),
    or, when there is none, the active one if it has any code. Raises
    :class:`IndexNotBuilt` when no model has codes; ``None`` when there is no model."""
    from ..models import HashCode
    from .indexing import index_complete

    version = active_version()
    if version is None or index_complete(version):
        return version
    previous = ModelVersion.objects.filter(
        kind=ModelVersion.Kind.HASHING, version__lt=version.version
    ).order_by("-version")
    for older in previous:
        if index_complete(older) and HashCode.objects.filter(version=older).exists():
            return older
    if HashCode.objects.filter(version=version).exists():
        return version
    raise IndexNotBuilt(INDEX_BUILDING_MESSAGE.format(version=version.version))


def full_index_job(statuses: Sequence[str] = Job.ACTIVE, *, since=None) -> Job | None:
    """The newest indexing job of the whole archive (not one for new images only) in one
    of ``statuses`` (created at or after ``since`` when given)."""
    jobs = Job.objects.filter(kind=JOB_KIND, status__in=list(statuses))
    if since is not None:
        jobs = jobs.filter(created_at__gte=since)
    for job in jobs.order_by("-pk"):
        if not (job.params or {}).get("image_ids"):
            return job
    return None


def start_index_job(
    params: dict | None = None,
    *,
    user=None,
    title: str = "",
    coalesce: Sequence[str] = (Job.Status.QUEUED,),
) -> tuple[Job, bool]:
    """Start an indexing job unless a full one in ``coalesce`` statuses exists already:
    ``(job, started)``, the existing job with ``started`` False then. A queued full job
    covers everything (it looks for the images without a code when it starts). The check
    and the start hold the active hashing model's row lock, so two requests (or a
    request and a worker) cannot both pass the check."""
    from django.db import transaction

    from viva.jobs import start_job

    with transaction.atomic():
        list(
            ModelVersion.objects.select_for_update().filter(
                kind=ModelVersion.Kind.HASHING, is_active=True
            )
        )
        existing = full_index_job(coalesce)
        if existing is not None:
            return existing, False
        return start_job(JOB_KIND, params or {}, user=user, title=title), True


def last_index_job() -> Job | None:
    return (
        Job.objects.filter(kind__in=[JOB_KIND, FIT_JOB_KIND])
        .select_related("created_by")
        .order_by("-created_at", "-pk")
        .first()
    )


def status(*, ask_backend: bool = False) -> IndexStatus:
    """The index's state from the database; ``ask_backend`` also counts the backend's codes
    (one request to Elasticsearch, or opening the FAISS files) and reports it when down."""
    from annotation.grid import _counted

    from ..models import HashCode

    # Counted on every page that shows the status: cached for a minute when slow (a
    # full count of millions of rows takes seconds on PostgreSQL), as the grid does.
    version = active_version()
    n_images, _ = _counted(Image.objects.all(), "viva:similarity:n_images")
    label = backends.backend_label()
    job = last_index_job()
    if version is None:
        return IndexStatus(False, NO_MODEL_MESSAGE, None, label, 0, n_images, job=job)
    try:
        used = searchable_version()
    except IndexNotBuilt:
        used = None
    if used is None:
        message = (
            f"The archive's similarity index is not built yet: hashing model "
            f"v{version.version} exists, but no image has been indexed with it. A trainer "
            "can build the index from the similarity search page."
        )
        return IndexStatus(False, message, version, label, 0, n_images, job=job)
    n_codes, _ = _counted(
        HashCode.objects.filter(version=used), f"viva:similarity:n_codes:{used.pk}"
    )
    message = (
        f"{n_codes:,} of {n_images:,} images indexed (hashing model v{used.version}, {label})."
    )
    if used.pk != version.pk:
        message += (
            f" The index for the new hashing model v{version.version} is being built; "
            "searches use the previous one until it is complete."
        )
    result = IndexStatus(True, message, used, label, n_codes, n_images, job=job)
    if ask_backend:
        try:
            index = backends.get_index(used)
            result.n_index = index.count()
            result.backend_error = getattr(index, "load_error", None) or ""
        except SimilarityError as exc:
            result.backend_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - any backend failure is "unavailable"
            result.backend_error = str(unavailable(exc))
    return result


def index_status() -> tuple[bool, str]:
    """``(built, message)`` for :mod:`annotation.similarity` (database only: cheap)."""
    current = status()
    return current.built, current.message


# --------------------------------------------------------------------------- errors


def unavailable(exc: Exception) -> IndexUnavailable:
    """One clear sentence for every way a backend can fail (down, timeout, bad reply); the
    backends' own ``IndexUnavailable`` messages are already that sentence."""
    if isinstance(exc, IndexUnavailable):
        return exc
    detail = str(exc).strip() or type(exc).__name__
    return IndexUnavailable(
        f"The similarity index ({backends.backend_label()}) cannot be used right now: "
        f"{detail}. Nothing else is affected; try again later or ask an administrator."
    )


# --------------------------------------------------------------------------- encoding


def get_encoder(version: ModelVersion):
    """The hashing model's encoder, loaded once per process (a CNN; loading costs seconds).
    The hashing package's cache keeps only the newest encoder, so an old model's network
    is released when a new one is used."""
    from ..hashing.encoder import load_encoder

    return load_encoder(version)


def forget_encoders() -> None:
    """Drop loaded encoders (tests; a process that must see a model version's files
    change)."""
    from ..hashing.encoder import clear_cache

    clear_cache()


def stored_codes(version: ModelVersion, image_ids: Sequence[int]) -> dict[int, np.ndarray]:
    from ..models import HashCode

    rows = HashCode.objects.filter(version=version, image_id__in=list(image_ids))
    return {
        image_id: np.frombuffer(bytes(code), dtype=np.uint8)
        for image_id, code in rows.values_list("image_id", "code")
    }


def codes_for_images(version: ModelVersion, image_ids: Sequence[int]) -> np.ndarray:
    """Codes of archive images: stored ones, the others encoded from their files."""
    ids = list(dict.fromkeys(int(i) for i in image_ids))
    codes = stored_codes(version, ids)
    missing = [i for i in ids if i not in codes]
    if missing:
        files = dict(Image.objects.filter(pk__in=missing).values_list("pk", "file"))
        readable = [i for i in missing if i in files]
        if readable:
            encoded, ok = get_encoder(version).encode_paths(
                [media_path(files[i]) for i in readable]
            )
            for i, code, good in zip(readable, encoded, ok, strict=True):
                if good:
                    codes[i] = np.asarray(code, dtype=np.uint8)
    if not codes:
        raise SimilarityError(
            "The query images could not be read (deleted, or their files are missing)."
        )
    return check_codes(np.stack([codes[i] for i in ids if i in codes]))


def codes_for_pictures(
    version: ModelVersion, pictures: Sequence[PILImage.Image | bytes]
) -> np.ndarray:
    """Codes of query pictures: decoded images, or image files as bytes (uploads, fetched
    URLs), which are decoded exactly as the archive's files are when indexed."""
    encoder = get_encoder(version)
    if all(isinstance(p, bytes) for p in pictures):
        return check_codes(encoder.encode_bytes(list(pictures)))
    decoded = [PILImage.open(io.BytesIO(p)) if isinstance(p, bytes) else p for p in pictures]
    return check_codes(encoder.encode_images([p.convert("RGB") for p in decoded]))


# --------------------------------------------------------------------------- search


def _search_codes(index, codes: np.ndarray, k: int) -> tuple[dict[int, int], bool]:
    """One search per code, merged by the minimum distance over the query codes; also
    whether some code got all ``k`` it asked for (so asking for more could find more)."""
    if len(codes) > 1 and hasattr(index, "search_batch"):
        lists = index.search_batch(codes, k)
    else:
        lists = [index.search(code, k) for code in codes]
    best: dict[int, int] = {}
    full = False
    for hits in lists:
        full = full or len(hits) >= k
        for image_id, distance in hits:
            image_id, distance = int(image_id), int(distance)
            if image_id not in best or distance < best[image_id]:
                best[image_id] = distance
    return best, full


def search(
    query: Sequence[PILImage.Image | bytes] | Sequence[int], k: int, *, keyframes_only: bool = False
) -> list[tuple[int, float]]:
    """The ``k`` nearest images to the query as ``(image id, Hamming distance)``, nearest
    first (ties by id); query images excluded; ``keyframes_only`` drops stills and web
    images. Raises :class:`IndexNotBuilt`, :class:`SimilarityError` (unreadable query) or
    ``IndexUnavailable`` (backend down) with a message for the user."""
    query = list(query)
    if not query:
        raise ValueError("A similarity query needs at least one image.")
    version = searchable_version()
    if version is None:
        raise IndexNotBuilt(NO_MODEL_MESSAGE)
    exclude: set[int] = set()
    if all(isinstance(q, (PILImage.Image, bytes)) for q in query):
        codes = codes_for_pictures(version, query)
    else:
        exclude = {int(q) for q in query}
        codes = codes_for_images(version, [int(q) for q in query])
    try:
        index = backends.get_index(version)
    except SimilarityError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a client library's connection error
        raise unavailable(exc) from exc
    fetch = min(MAX_FETCH, k + len(exclude))
    while True:
        try:
            best, full = _search_codes(index, codes, fetch)
        except SimilarityError:  # IndexUnavailable, IndexNotBuilt: the backend's own words
            raise
        except Exception as exc:  # noqa: BLE001
            raise unavailable(exc) from exc
        ranked = sorted(
            ((i, d) for i, d in best.items() if i not in exclude), key=lambda p: (p[1], p[0])
        )
        results = _existing(ranked, keyframes_only=keyframes_only)
        exhausted = not full or fetch >= MAX_FETCH
        if len(results) >= k or exhausted:
            return [(i, float(d)) for i, d in results[:k]]
        fetch = min(MAX_FETCH, fetch * 4)


def _existing(ranked: list[tuple[int, int]], *, keyframes_only: bool) -> list[tuple[int, int]]:
    """Drop ids of deleted images (the index may lag behind) and, if asked, non-keyframes."""
    if not ranked:
        return []
    rows = Image.objects.filter(pk__in=[i for i, _ in ranked])
    if keyframes_only:
        rows = rows.filter(video__isnull=False)
    keep = set(rows.values_list("pk", flat=True))
    return [(i, d) for i, d in ranked if i in keep]


def similar_images(query_images, k: int) -> list[tuple[int, float]]:
    """The acquisition pages' query (:mod:`annotation.similarity`): every indexed image,
    keyframes and stills alike, since a label on either is training data."""
    return search(query_images, k)
