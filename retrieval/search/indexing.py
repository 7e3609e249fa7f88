"""Indexing the archive for similarity search (issue 6, item 3).

Computes the 256-bit code of every image that has none under the active hashing model,
stores it (``HashCode``) and adds it to the configured backend, chunk by chunk.

Resumable without bookkeeping: the work left is exactly "images without a stored code", so
a second run (a resumed job, a job started twice, the job of the ``images_added`` signal
racing a full run) continues where the last one stopped; ``bulk_create(ignore_conflicts)``
and the backends' add-or-replace make a chunk done twice harmless. Codes are stored before
they reach the backend, and every run first compares the backend's count with the stored
codes and rebuilds the backend from the database when they differ (a worker died before
the FAISS files were written, the backend was switched to Elasticsearch, the ES index was
lost), so the database is the source of truth and the backend is always reproducible
(DESIGN.md section 4: "stored so indexes can be rebuilt").
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.urls import reverse

from annotation.similarity import IndexNotBuilt
from training.models import ModelVersion
from viva.jobs import JobContext
from viva.media import media_path
from viva.models import Image

from ..models import HashCode
from . import backends
from .base import check_codes
from .service import NO_MODEL_MESSAGE, active_version, get_encoder

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 256
REBUILD_BATCH = 20_000
# The FAISS files are rewritten at most this often (and at the end): rewriting a large
# index after every chunk would cost more than encoding the chunk.
PERSIST_EVERY_S = 30.0
MAX_LOGGED_SKIPS = 10


@dataclass
class IndexingReport:
    version: int
    backend: str
    pending: int = 0
    indexed: int = 0
    skipped: int = 0
    rebuilt: int | None = None
    seconds: float = 0.0
    n_codes: int = 0
    n_index: int = 0

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        rebuilt = (
            f" The backend was rebuilt from {self.rebuilt:,} stored codes."
            if (self.rebuilt is not None)
            else ""
        )
        return {
            "summary": (
                f"Indexed {self.indexed:,} images with hashing model v{self.version} "
                f"({self.skipped} unreadable, skipped) in {self.seconds:.1f} s "
                f"({self.images_per_second:.1f} images/s); the index now holds "
                f"{self.n_index:,} codes ({self.backend}).{rebuilt}"
            ),
            "version": self.version,
            "backend": self.backend,
            "pending": self.pending,
            "indexed": self.indexed,
            "skipped": self.skipped,
            "rebuilt": self.rebuilt,
            "seconds": round(self.seconds, 2),
            "images_per_second": round(self.images_per_second, 2),
            "n_codes": self.n_codes,
            "n_index": self.n_index,
            "url": reverse("retrieval:similar"),
            "url_label": "Search similar images",
        }


def pending_images(version: ModelVersion, image_ids: Sequence[int] | None = None):
    """Images without a code under ``version`` (all of them, or of ``image_ids``)."""
    coded = HashCode.objects.filter(version=version, image_id=OuterRef("pk"))
    rows = Image.objects.filter(~Exists(coded))
    if image_ids is not None:
        rows = rows.filter(pk__in=list(image_ids))
    return rows.order_by("pk")


def stored_batches(
    version: ModelVersion, batch: int = REBUILD_BATCH
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All stored codes of ``version`` as ``(ids, codes)`` batches, in id order (keyset)."""
    last = 0
    while True:
        rows = list(
            HashCode.objects.filter(version=version, image_id__gt=last)
            .order_by("image_id")
            .values_list("image_id", "code")[:batch]
        )
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        codes = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype=np.uint8)
        yield ids, check_codes(codes.reshape(len(rows), -1))
        last = rows[-1][0]


def _stale_ids(index, version: ModelVersion) -> np.ndarray:
    """Ids the index holds without a stored code (deleted images: their codes went with
    them by cascade); empty when the backend cannot list its ids."""
    if not hasattr(index, "live_ids"):
        return np.zeros(0, dtype=np.int64)
    stored = np.fromiter(
        HashCode.objects.filter(version=version).values_list("image_id", flat=True).iterator(),
        dtype=np.int64,
    )
    return np.setdiff1d(index.live_ids(), stored, assume_unique=False)


def reconcile(index, version: ModelVersion, ctx: JobContext | None = None) -> int | None:
    """Make the backend hold the stored codes: ids of deleted images are removed from it
    (cheap), and it is rebuilt from the stored codes only when codes are missing; returns
    how many codes were re-indexed (``None``: no rebuild)."""
    n_codes = HashCode.objects.filter(version=version).count()
    n_index = index.count()
    if n_index == n_codes:
        return None
    if n_index > n_codes:
        stale = _stale_ids(index, version)
        if len(stale):
            index.remove(stale)
            index.persist()
            _log(ctx, f"Removed {len(stale):,} deleted images from the index.")
            n_index = index.count()
            if n_index == n_codes:
                return None
    _log(
        ctx,
        f"The index holds {n_index:,} codes but {n_codes:,} are stored; rebuilding it "
        "from the stored codes.",
    )
    if ctx:
        ctx.progress(0, n_codes, note="Rebuilding the index from stored codes …")
    done = 0

    def batches():
        nonlocal done
        for ids, codes in stored_batches(version):
            yield ids, codes
            done += len(ids)
            if ctx:
                ctx.progress(done, n_codes, note="Rebuilding the index from stored codes …")

    index.rebuild(batches())
    index.persist()
    return n_codes


def lock_path(version: ModelVersion) -> Path:
    """The file whose exclusive ``flock`` one indexing run of ``version`` holds (any
    backend: for FAISS the index folder's own lock file)."""
    if backends.backend_name() == "faiss":
        from .faiss_index import WRITE_LOCK

        return backends.faiss_directory(version) / WRITE_LOCK
    return Path(settings.VIVA_INDEX_DIR) / "locks" / f"es-{version.pk}.lock"


@contextlib.contextmanager
def writer_lock(index, version: ModelVersion, ctx: JobContext | None = None):
    """One writer per version at a time, across processes (``runall`` runs two workers):
    two runs writing the same FAISS folder would each persist their own copy (losing the
    other's codes) and delete each other's new files; two Elasticsearch rebuilds would
    delete each other's new index. The index is reloaded once the lock is held."""
    logged = False

    def wait() -> None:
        nonlocal logged
        if not logged:
            _log(ctx, "Waiting for another indexing job of this model to finish …")
            if ctx:
                ctx.progress(0, None, note="Waiting for another indexing job …")
            logged = True
        if ctx:
            ctx.check_cancelled()

    if hasattr(index, "writing"):
        with index.writing(wait):
            yield
        return
    path = lock_path(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                wait()
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def index_complete(version: ModelVersion) -> bool:
    """Whether a full indexing run of ``version`` has finished (its codes are complete)."""
    return bool((version.metrics or {}).get("index_complete"))


def _mark_complete(version: ModelVersion) -> None:
    with transaction.atomic():
        row = ModelVersion.objects.select_for_update().get(pk=version.pk)
        metrics = dict(row.metrics or {})
        if not metrics.get("index_complete"):
            metrics["index_complete"] = True
            ModelVersion.objects.filter(pk=row.pk).update(metrics=metrics)
        version.metrics = metrics


def index_images(
    version: ModelVersion | None = None,
    *,
    image_ids: Sequence[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ctx: JobContext | None = None,
) -> IndexingReport:
    """Encode, store and index every pending image (or the pending ones of ``image_ids``).

    Progress (done / total, images/s, ETA from the job's rate) goes to ``ctx``; the job can
    be cancelled between chunks and resumed later. Raises :class:`IndexNotBuilt` when
    there is no hashing model.
    """
    version = version or active_version()
    if version is None:
        raise IndexNotBuilt(NO_MODEL_MESSAGE)
    started = time.monotonic()
    report = IndexingReport(version=version.version, backend=backends.backend_label())
    index = backends.get_index(version, fresh=True)
    with writer_lock(index, version, ctx):
        _index_locked(version, index, report, image_ids, chunk_size, ctx, started)
    if image_ids is None:
        _mark_complete(version)
    backends.forget(version)
    _log(ctx, report.as_dict()["summary"])
    return report


def _index_locked(
    version: ModelVersion,
    index,
    report: IndexingReport,
    image_ids: Sequence[int] | None,
    chunk_size: int,
    ctx: JobContext | None,
    started: float,
) -> None:
    if hasattr(index, "setup"):
        index.setup()  # Elasticsearch: mapping, neighbour index and script (idempotent)
    report.rebuilt = reconcile(index, version, ctx)
    total = pending_images(version, image_ids).count()
    report.pending = total
    _log(
        ctx,
        f"Indexing {total:,} images with hashing model v{version.version} into "
        f"{report.backend} ({chunk_size} per chunk).",
    )
    if ctx:
        ctx.progress(0, total, note="Loading the hashing model …")
    encoder = get_encoder(version) if total else None
    last_id, done, unsaved, last_persist = 0, 0, 0, time.monotonic()
    try:
        while done < total:
            rows = list(
                pending_images(version, image_ids)
                .filter(pk__gt=last_id)
                .values_list("pk", "file", "original_name")[:chunk_size]
            )
            if not rows:
                break
            last_id = rows[-1][0]
            t0 = time.monotonic()
            codes, ok = encoder.encode_paths([media_path(r[1]) for r in rows])
            ok = np.asarray(ok, dtype=bool)
            good_ids = np.array([r[0] for r in rows], dtype=np.int64)[ok]
            good_codes = check_codes(np.asarray(codes, dtype=np.uint8)[ok]) if ok.any() else None
            _store(version, good_ids, good_codes)
            if good_codes is not None:
                index.add(good_ids, good_codes)
                unsaved += len(good_ids)
            for (pk, file, name), good in zip(rows, ok, strict=True):
                if not good:
                    report.skipped += 1
                    if report.skipped <= MAX_LOGGED_SKIPS:
                        _log(ctx, f"Skipped image {pk} ({name or file}): unreadable.")
            report.indexed += int(ok.sum())
            done += len(rows)
            if unsaved and time.monotonic() - last_persist >= PERSIST_EVERY_S:
                index.persist()
                unsaved, last_persist = 0, time.monotonic()
            if ctx:
                elapsed = time.monotonic() - started
                rate = len(rows) / max(1e-6, time.monotonic() - t0)
                ctx.metric("images/s", round(elapsed, 2), round(rate, 2))
                ctx.progress(done, total, note=f"{done:,} / {total:,} images · {rate:.1f} images/s")
                ctx.check_cancelled()
    finally:
        if unsaved:
            index.persist()
    # Another job may have stored codes meanwhile (the new-images job racing a full run):
    # whoever finishes last makes the backend match the database.
    if reconcile(index, version, ctx) is not None:
        report.rebuilt = HashCode.objects.filter(version=version).count()
    report.seconds = time.monotonic() - started
    report.n_codes = HashCode.objects.filter(version=version).count()
    report.n_index = index.count()


def _store(version: ModelVersion, ids: np.ndarray, codes: np.ndarray | None) -> None:
    if codes is None or not len(ids):
        return
    with transaction.atomic():
        HashCode.objects.bulk_create(
            [
                HashCode(version=version, image_id=int(i), code=bytes(c))
                for i, c in zip(ids, codes, strict=True)
            ],
            ignore_conflicts=True,
            batch_size=500,
        )


def _log(ctx: JobContext | None, message: str) -> None:
    if ctx:
        ctx.log(message)
    else:
        log.info(message)
