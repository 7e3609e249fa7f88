"""Person similarity search: the process-wide face index, kept up to date, and queries.

* :func:`face_index` — one :class:`FaceIndex` per process, reloaded when another process
  (the rebuild job) persisted a new one;
* :func:`similar_faces` — before every search the index takes in faces stored since it was
  last updated (ids above its ``last_id``: the face pipeline only appends), then searches,
  drops faces deleted meanwhile, and re-scores the candidates with their stored embeddings
  so the similarities shown are exact cosines even when the index is approximate;
* :func:`rebuild_face_index` — what the "index_face_embeddings" job runs: every stored
  embedding into a new index of the type the size asks for (exact or IVF), trained on a
  random sample, checkpointed so a resumed job continues where it stopped.

Nothing here imports torch; faiss is imported when the index is first used.
"""

from __future__ import annotations

import fcntl
import json
import random
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Count

from viva.jobs import JobError
from viva.models import Face

from .index import FaceIndex, FaceIndexError, IndexSpec

JOB_KIND = "index_face_embeddings"
CHUNK = 5000
CHECKPOINT_EVERY = 200_000
PERSIST_AFTER_ADDS = 2000  # the web process writes its incremental additions now and then
SYNC_LIMIT = 50_000  # faces a search adds to the index at most; more: the rebuild job
DEFAULT_K = 100
MAX_K = 1000
STATUS_CACHE_KEY = "face_search:counts"
STATUS_CACHE_SECONDS = 30
EMBEDDER_CACHE_KEY = "face_search:embedder"

_lock = threading.Lock()
_cached: FaceIndex | None = None


class FaceSearchError(Exception):
    """A query cannot be answered; the message is for the user."""


def index_dir() -> Path:
    return Path(settings.VIVA_INDEX_DIR) / "faces"


def _exact_max() -> int:
    return int(settings.VIVA_FACE_INDEX_EXACT_MAX)


@contextmanager
def _file_lock(directory: Path, name: str = ".lock", *, wait: bool = True):
    """Serialises writers of one index directory across processes (web, workers).

    With ``wait=False`` a lock held elsewhere raises :class:`BlockingIOError` at once."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RebuildRunning(JobError):
    """Another rebuild holds the staging folder; this one stops without touching it."""


def start_rebuild(user):
    """The active rebuild job, or a new one: check-then-start under a lock, so a double
    click (two requests at once, even in two web processes) starts one job only."""
    from viva.jobs import start_job
    from viva.models import Job

    with _file_lock(index_dir(), ".start.lock"), transaction.atomic():
        running = (
            Job.objects.select_for_update()
            .filter(kind=JOB_KIND, status__in=Job.ACTIVE)
            .order_by("-pk")
        )
        return running.first() or start_job(JOB_KIND, {}, user=user)


def face_index() -> FaceIndex:
    """This process's index; re-read when the files changed since it was loaded."""
    global _cached
    with _lock:
        directory = index_dir()
        current = _cached
        if current is None or current.directory != directory:
            current = FaceIndex(directory, exact_max=_exact_max())
        elif current.meta_stamp() != current.loaded_stamp:
            current.load()
        current.exact_max = _exact_max()
        _cached = current
        return current


def reset_cache() -> None:
    """Forget the loaded index (tests; after the index directory was deleted)."""
    global _cached
    with _lock:
        _cached = None


def _embedded_faces(embedder: str | None = None):
    """Faces with an embedding; with ``embedder``, only those ``Face.embedder`` names."""
    faces = Face.objects.filter(embedding__isnull=False)
    return faces if embedder is None else faces.filter(embedder=embedder)


def index_embedder() -> str:
    """The embedder whose faces the index holds: the weights this machine embeds with
    (``training.faces.embed.embedder_source``), or — where it has none ("missing") — the
    most common embedder among the stored faces. Embeddings of different weights ("random"
    and "vggface2") are not comparable: their cosines are noise."""
    from training.faces.embed import embedder_source  # torch-free; lazily (app loading)

    source = embedder_source()
    if source != "missing":
        return source
    return cache.get_or_set(EMBEDDER_CACHE_KEY, _majority_embedder, STATUS_CACHE_SECONDS)


def _majority_embedder() -> str:
    top = (
        _embedded_faces()
        .values_list("embedder")
        .order_by()
        .annotate(n=Count("pk"))
        .order_by("-n", "embedder")
        .first()
    )
    return top[0] if top else ""


def _chunks(after: int, upto: int | None = None, embedder: str | None = None) -> Iterator[tuple]:
    """(ids int64, vectors float32) of stored embeddings with id > ``after``, by id."""
    last, size = after, CHUNK
    while True:
        qs = _embedded_faces(embedder).filter(pk__gt=last)
        if upto is not None:
            qs = qs.filter(pk__lte=upto)
        rows = list(qs.order_by("pk").values_list("pk", "embedding")[:size])
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        yield ids, Face.unpack_embeddings(r[1] for r in rows)
        last = int(ids[-1])


def sync(index: FaceIndex | None = None, limit: int | None = None) -> int:
    """Add faces stored after the index's ``last_id``, unless more than ``limit`` (default
    ``SYNC_LIMIT``) wait: a web request does not build a large index, the job does.
    Returns how many were added."""
    index = index or face_index()
    limit = SYNC_LIMIT if limit is None else limit
    embedder = index_embedder()
    added = 0
    with index.lock:
        if not index.index.is_trained:
            return 0
        if index.count == 0 and not index.meta.get("embedder"):
            index.meta["embedder"] = embedder  # a new, empty index takes today's embedder
        if index.meta.get("embedder", embedder) != embedder:
            return 0  # built from another embedder's faces: only a rebuild helps
        backlog = _embedded_faces(embedder).filter(pk__gt=index.last_id).order_by("pk")
        if backlog.values_list("pk", flat=True)[limit : limit + 1].exists():
            return 0  # too many for a request: the status box asks for a rebuild
        for ids, vectors in _chunks(index.last_id, embedder=embedder):
            added += index.add(ids, vectors)
        unsaved = int(index.meta.get("unsaved", 0)) + added
        index.meta["unsaved"] = unsaved
        if added and unsaved >= PERSIST_AFTER_ADDS:
            _persist_if_current(index)
    return added


def _persist_if_current(index: FaceIndex) -> bool:
    """Write the index unless another process persisted a newer one meanwhile (then the
    next :func:`face_index` loads that one and catches up from its ``last_id``)."""
    with _file_lock(index.directory):
        if index.meta_stamp() != index.loaded_stamp:
            return False
        index.meta["unsaved"] = 0
        index.persist()
        return True


def similar_faces(
    vector: Any,
    k: int = DEFAULT_K,
    exclude_face_ids: Sequence[int] = (),
    embedder: str | None = None,
) -> list[tuple[int, float]]:
    """The ``k`` stored faces most similar to ``vector``: (face id, cosine), best first.

    ``embedder`` is the query's (a stored face's own ``Face.embedder``; default: the
    current one, :func:`index_embedder`, as for an uploaded picture): faces of other
    embedders are never returned, their cosines to the query mean nothing."""
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    if query.size != Face.EMBEDDING_DIM or not np.isfinite(query).all():
        raise FaceSearchError("The query face has no usable embedding.")
    norm = float(np.linalg.norm(query))
    if norm == 0:
        raise FaceSearchError("The query face has no usable embedding.")
    query = query / norm
    k = max(1, min(int(k), MAX_K))
    excluded = {int(i) for i in exclude_face_ids}
    current = index_embedder()
    embedder = current if embedder is None else embedder
    index = face_index()
    try:
        sync(index)
    except FaceIndexError as exc:
        raise FaceSearchError(str(exc)) from exc
    built_from = index.meta.get("embedder") or current
    if embedder != built_from:
        raise FaceSearchError(
            f"This face was embedded by '{embedder or 'unknown'}', the face index holds "
            f"faces embedded by '{built_from or 'unknown'}': embeddings of different weights "
            "are not comparable. Embed the faces again (face pipeline) or rebuild the index."
        )
    if index.count == 0 and _embedded_faces(embedder).exists():
        raise FaceSearchError(
            "The face index has not been built yet; a trainer can build it with "
            "“Rebuild the face index” on this page."
        )
    want = k + len(excluded)
    for _attempt in range(3):
        hits = index.search(query, want)
        ids = [i for i, _ in hits if i not in excluded]
        found = _embedded_faces().filter(pk__in=ids).values_list("pk", "embedding", "embedder")
        rows = {pk: blob for pk, blob, kind in found if kind == embedder}
        gone = [i for i in ids if i not in rows]
        if gone:
            # Deleted faces, or faces embedded by other weights (an index from before
            # the embedder changed): forget them (a rebuild makes it permanent).
            index.remove(gone)
        live = [i for i in ids if i in rows]
        if len(live) >= k or len(hits) < want:
            break
        want = want * 2 + len(gone)
    if not live:
        return []
    # Exact cosines from the stored embeddings: the IVF's 8-bit codes only choose the
    # candidates; ranks and the numbers shown come from the real vectors.
    vectors = Face.unpack_embeddings(rows[i] for i in live)
    norms = np.linalg.norm(vectors, axis=1)
    sims = vectors @ query / np.where(norms > 0, norms, 1)
    order = np.argsort(-sims, kind="stable")[:k]
    return [(live[j], round(float(sims[j]), 5)) for j in order]


# --- rebuilding -------------------------------------------------------------------------
def _random_sample(size: int, upto: int, embedder: str | None = None) -> np.ndarray:
    """About ``size`` random stored embeddings (ids drawn in the id range, then read)."""
    bounds = (
        _embedded_faces(embedder).filter(pk__lte=upto).order_by("pk").values_list("pk", flat=True)
    )
    first = bounds.first() or 0
    rng = random.Random(upto)
    picks = sorted({rng.randint(first, upto) for _ in range(size * 2)})
    blobs: list = []
    for start in range(0, len(picks), 900):  # SQLite's parameter limit
        part = picks[start : start + 900]
        blobs.extend(
            _embedded_faces(embedder).filter(pk__in=part).values_list("embedding", flat=True)
        )
    return Face.unpack_embeddings(blobs[:size])


def _staging(directory: Path) -> Path:
    return directory / "staging"


def rebuild_face_index(
    *,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = lambda msg: None,
    check: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Build a new index of every stored embedding and install it; resumable.

    The new index grows in ``<index>/staging`` and is checkpointed every
    ``CHECKPOINT_EVERY`` faces; a second call (a resumed job) continues from the
    checkpoint when it was planned for the same faces. ``check`` is called between chunks
    (job cancellation). The live index keeps answering queries until the new one is
    installed.
    """
    directory = index_dir()
    try:
        with _file_lock(directory, ".rebuild.lock", wait=False):
            return _rebuild(directory, progress=progress, log=log, check=check)
    except BlockingIOError:
        raise RebuildRunning(
            "Another face index rebuild is running (it uses the same staging folder); "
            "this one stopped without changing anything. Wait for the other one to finish."
        ) from None


def _rebuild(directory: Path, *, progress, log, check) -> dict[str, Any]:
    staging_dir = _staging(directory)
    embedder = index_embedder()  # only faces of one embedder are comparable
    faces = _embedded_faces(embedder)
    upto = faces.order_by("-pk").values_list("pk", flat=True).first() or 0
    total = faces.filter(pk__lte=upto).count()
    plan = {"upto": upto, "total": total, "embedder": embedder}
    staging = None
    plan_file = staging_dir / "plan.json"
    if plan_file.exists():
        try:
            if json.loads(plan_file.read_text()) == plan:
                staging = FaceIndex(staging_dir, exact_max=_exact_max())
                log(f"Continuing the checkpoint of {staging.count:,} faces.")
        except (OSError, ValueError, FaceIndexError):
            staging = None
    if staging is None:
        shutil.rmtree(staging_dir, ignore_errors=True)
        staging_dir.mkdir(parents=True)
        staging = FaceIndex(staging_dir, exact_max=_exact_max())
        spec = IndexSpec.for_size(total, _exact_max())
        log(f"Building a {spec.label} index of {total:,} faces (embedder '{embedder}').")
        others = _embedded_faces().exclude(embedder=embedder).count()
        if others:
            log(f"{others:,} faces of other embedders are left out (not comparable).")
        sample = _random_sample(spec.train_size(), upto, embedder) if spec.train_size() else None
        if sample is not None:
            log(f"Training {spec.nlist} IVF cells on {len(sample):,} random faces …")
        staging.rebuild(iter(()), total=total, sample=sample, spec=spec, persist=False)
        staging.persist()
        plan_file.write_text(json.dumps(plan))
    done = staging.count
    since_checkpoint = 0
    if progress:
        progress(done, total)
    for ids, vectors in _chunks(staging.last_id, upto, embedder):
        check()
        staging.add(ids, vectors)
        done += len(ids)
        since_checkpoint += len(ids)
        if progress:
            progress(done, total)
        if since_checkpoint >= CHECKPOINT_EVERY:
            staging.persist()
            since_checkpoint = 0
    staging.meta["last_id"] = max(staging.last_id, upto)
    with _file_lock(directory):
        # The finished index moves into the live directory: new file, then meta.json.
        target = staging
        target.directory = directory
        target.meta = {
            "last_id": staging.last_id,
            "built_at": _now(),
            "unsaved": 0,
            "embedder": embedder,
        }
        target.persist(faces=total)
        shutil.rmtree(staging_dir, ignore_errors=True)
    stats = target.stats()
    log(f"Installed the face index: {stats['count']:,} faces, {stats['type']}.")
    return stats


def _now() -> float:
    import time

    return time.time()


# --- status -----------------------------------------------------------------------------
def index_status() -> dict[str, Any]:
    """Faces indexed / faces with embeddings, type, and whether a rebuild is advised."""
    from viva.models import Job

    embedder = index_embedder()
    try:
        index = face_index()
        stats = index.stats()
        error = ""
        built_from = index.meta.get("embedder")
        if built_from and built_from != embedder and index.count:
            # Faces are embedded by other weights now: the index cannot take them in.
            stats["rebuild_advised"] = True
    except FaceIndexError as exc:
        stats, error = {"count": 0, "type": "—", "rebuild_advised": True}, str(exc)
    # Counting a million face rows (with their blobs) costs a scan: cached briefly.
    faces, embedded = cache.get_or_set(
        STATUS_CACHE_KEY,
        lambda: (Face.objects.count(), _embedded_faces().count()),
        STATUS_CACHE_SECONDS,
    )
    last_job = Job.objects.filter(kind=JOB_KIND).order_by("-pk").first()
    pending = _embedded_faces(embedder).filter(pk__gt=stats.get("last_id") or 0).count()
    return {
        **stats,
        "faces": faces,
        "embedded": embedded,
        "pending": pending,  # added at the next search
        "error": error,
        "job": last_job,
        "built": bool(stats.get("count")) or pending > 0,
    }
