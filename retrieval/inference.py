"""Inference of the active concept model over the archive's keyframes (issue 5, item 1).

A run (:class:`~retrieval.models.InferenceRun`) is split at its start into chunks of
consecutive image ids (:func:`plan_chunks`). Any number of workers — jobs of kind
``infer_concepts`` on the ``gpu`` queue, one per device — loop over

1. :func:`claim_chunk`: ``UPDATE … SET status='claimed' WHERE pk=… AND status='pending'``
   (or ``'claimed'`` with a heartbeat older than ``VIVA_JOB_HEARTBEAT_TIMEOUT``: its
   worker died), with a token naming the claimant;
2. :func:`score_chunk`: decode, resize, forward; unreadable keyframes are logged and
   counted, not fatal;
3. :func:`write_chunk`: in ONE transaction, mark the chunk done *only if this worker
   still holds it*, delete whatever predictions the run has in the chunk's id range
   (a half-finished earlier attempt cannot leave any, but the delete makes it certain)
   and bulk-insert the scores at or above the floor;

until no chunk is left; the worker that sees every chunk done completes and publishes the
run (:func:`finish_run`: the previously published run of the kind is unpublished in the
same transaction) and then deletes the superseded runs' predictions
(:func:`purge_superseded`). So a restarted or second worker continues where others
stopped, nothing is scored twice into the table, nothing is skipped, and retrieval never
sees a half-written run: it reads the published run only.

Storage: only sigmoid scores ≥ ``VIVA_PREDICTION_FLOOR`` (default 0.05) are stored —
``docs/prediction-storage.md`` has the sizes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from annotation.models import Category
from training.devices import busy_job, device_exists, normalize_device
from training.models import ModelVersion
from training.registry import active_version
from viva.jobs import start_job
from viva.models import Collection, Image, Job

from .models import InferenceChunk, InferenceRun, Prediction

log = logging.getLogger(__name__)

JOB_KIND = "infer_concepts"
DEFAULT_CHUNK_SIZE = 2000
DEFAULT_FLOOR = 0.05
DEFAULT_BATCH_SIZE = 32
INSERT_BATCH = 5000
CHUNK_BEAT_SECONDS = 10.0
MAX_LOGGED_FAILURES = 20  # per chunk; the rest are only counted


class InferenceRefused(Exception):
    """An inference run was not started (no active model, nothing to score, a class map
    that no longer matches the categories, device gone or busy); no job was created.
    The message is meant for the user."""


def prediction_floor() -> float:
    """Scores (sigmoid probabilities) below this are not stored."""
    value = getattr(settings, "VIVA_PREDICTION_FLOOR", None)
    if value is None:
        value = os.environ.get("VIVA_PREDICTION_FLOOR", DEFAULT_FLOOR)
    return float(value)


def keyframes(collection_ids: Sequence[int] | None = None):
    """The images inference scores: keyframes (images of a video), optionally of some
    collections only."""
    qs = Image.objects.filter(video__isnull=False)
    if collection_ids:
        qs = qs.filter(collection_id__in=list(collection_ids))
    return qs


def class_map_problem(version: ModelVersion) -> str | None:
    """Why ``version``'s outputs cannot be stored as predictions, or ``None`` (concept and
    person models alike: every class must still be a category of the model's kind)."""
    person = version.kind == ModelVersion.Kind.PERSON
    kind = Category.Kind.PERSON if person else Category.Kind.CONCEPT
    what = "persons" if person else "categories"
    if not version.class_map:
        return f"{version} has no {'persons' if person else 'classes'}."
    ids = [int(c["id"]) for c in version.class_map]
    existing = set(Category.objects.filter(pk__in=ids, kind=kind).values_list("pk", flat=True))
    missing = [c["name"] for c in version.class_map if int(c["id"]) not in existing]
    if missing:
        names = ", ".join(f"“{n}”" for n in missing[:5]) + (" …" if len(missing) > 5 else "")
        return (
            f"The {what} {names} of {version} no longer exist (deleted since it was "
            f"trained), so its class map does not match the {what} any more. Train a "
            "new version (or activate one that matches) first."
        )
    return None


# --- starting (web side) -------------------------------------------------------------------
def _options(options: dict | None) -> dict:
    options = dict(options or {})
    unknown = set(options) - {"device", "collection_ids", "batch_size", "chunk_size", "workers"}
    if unknown:
        raise InferenceRefused(f"Unknown inference option(s): {', '.join(sorted(unknown))}.")
    try:
        batch = int(_given(options, "batch_size", DEFAULT_BATCH_SIZE))
        chunk = int(_given(options, "chunk_size", DEFAULT_CHUNK_SIZE))
        workers = int(_given(options, "workers", getattr(settings, "VIVA_TRAIN_NUM_WORKERS", 2)))
        collections = sorted({int(c) for c in options.get("collection_ids") or []})
    except (TypeError, ValueError) as exc:
        raise InferenceRefused(f"Bad inference option: {exc}.") from exc
    if not 1 <= batch <= 1024:
        raise InferenceRefused("The batch size must be between 1 and 1024.")
    if not 1 <= chunk <= 1_000_000:
        raise InferenceRefused("The chunk size must be between 1 and 1,000,000.")
    if not 0 <= workers <= 64:
        raise InferenceRefused("The number of loader processes must be between 0 and 64.")
    return {
        "device": normalize_device(options.get("device")),
        "collection_ids": collections,
        "batch_size": batch,
        "chunk_size": chunk,
        "workers": workers,
    }


def _given(options: dict, key: str, default):
    value = options.get(key)
    return default if value is None or value == "" else value


def _check_device(device: str, run: InferenceRun | None = None) -> None:
    if not device_exists(device):
        raise InferenceRefused(
            f"The device {device} is not available (any more); reload the page and choose "
            "another one."
        )
    holder = busy_job(device)
    if holder is not None and not (run is not None and _job_run_id(holder) == run.pk):
        raise InferenceRefused(
            f"{device} is busy with “{holder}” (job {holder.pk}, "
            f"{holder.get_status_display().lower()}); wait for it to finish or cancel it, "
            "or choose another device."
        )


def _job_run_id(job: Job) -> int | None:
    return (job.params or {}).get("run_id") if job.kind == JOB_KIND else None


def active_jobs(run: InferenceRun):
    return Job.objects.filter(kind=JOB_KIND, status__in=Job.ACTIVE, params__run_id=run.pk)


def unfinished_run(kind: str = ModelVersion.Kind.CONCEPT) -> InferenceRun | None:
    return (
        InferenceRun.objects.filter(kind=kind, status=InferenceRun.Status.RUNNING)
        .select_related("model_version")
        .order_by("-created_at")
        .first()
    )


def start_inference(user, options: dict | None = None) -> Job:
    """Start (or resume) inference of the active concept model over the keyframes of
    ``options["collection_ids"]`` (default: all) on ``options["device"]``.

    Refuses with :class:`InferenceRefused` (and creates no job) without an active model,
    with a class map that no longer matches the categories, without keyframes, with a
    vanished or busy device, or while a run is already in progress (add a worker to it
    instead: :func:`add_worker`). An unfinished run of the same model and collections
    whose jobs were cancelled or failed is continued, not restarted; an unfinished run of
    another model is abandoned (marked failed; its predictions are deleted)."""
    opts = _options(options)
    version = active_version(ModelVersion.Kind.CONCEPT)
    if version is None:
        raise InferenceRefused(
            "There is no active concept model; train one (or activate a version) first."
        )
    problem = class_map_problem(version)
    if problem:
        raise InferenceRefused(problem)
    if opts["collection_ids"]:
        found = set(
            Collection.objects.filter(pk__in=opts["collection_ids"]).values_list("pk", flat=True)
        )
        if len(found) != len(opts["collection_ids"]):
            raise InferenceRefused("A chosen collection no longer exists; reload the page.")
    if not keyframes(opts["collection_ids"]).exists():
        where = "the chosen collections have" if opts["collection_ids"] else "the archive has"
        raise InferenceRefused(
            f"There is nothing to score: {where} no keyframes (import videos first)."
        )
    with transaction.atomic():
        current = unfinished_run()
        if current is not None and active_jobs(current).exists():
            job = active_jobs(current).order_by("created_at").first()
            raise InferenceRefused(
                f"Inference run {current.pk} ({current.model_version}) is in progress (job "
                f"{job.pk}); wait for it, cancel it, or add a worker to it."
            )
        _check_device(opts["device"])
        run = None
        if (
            current is not None
            and current.model_version_id == version.pk
            and sorted(current.collection_ids or []) == opts["collection_ids"]
        ):
            run = current  # continue: its done chunks stay done
        elif current is not None:
            InferenceRun.objects.filter(pk=current.pk).update(status=InferenceRun.Status.FAILED)
        if run is None:
            run = InferenceRun.objects.create(
                kind=version.kind,
                model_version=version,
                collection_ids=opts["collection_ids"],
                score_floor=prediction_floor(),
            )
        job = _start_job(user, run, opts)
        if run.job_id is None or current is run:
            InferenceRun.objects.filter(pk=run.pk).update(job=job)
    return job


def add_worker(user, run: InferenceRun | int, device: str, options: dict | None = None) -> Job:
    """Another job on the same run (another GPU, another machine): it claims the chunks
    that are still pending, and the run completes when all are done."""
    if not isinstance(run, InferenceRun):
        run = InferenceRun.objects.filter(pk=run).first()
        if run is None:
            raise InferenceRefused("No such inference run.")
    if run.status != InferenceRun.Status.RUNNING:
        raise InferenceRefused(
            f"Inference run {run.pk} is {run.get_status_display().lower()}; nothing to join."
        )
    opts = _options({**(options or {}), "device": device})
    with transaction.atomic():
        _check_device(opts["device"], run)
        return _start_job(user, run, opts)


def _start_job(user, run: InferenceRun, opts: dict) -> Job:
    params = {
        "run_id": run.pk,
        "device": opts["device"],
        "batch_size": opts["batch_size"],
        "chunk_size": opts["chunk_size"],
        "workers": opts["workers"],
    }
    title = f"Concept inference ({run.model_version}) on {opts['device']}"
    job = start_job(JOB_KIND, params, user=user, title=title)
    Job.objects.filter(pk=job.pk).update(device=opts["device"])
    job.device = opts["device"]
    return job


# --- chunks (worker side) ------------------------------------------------------------------
def plan_chunks(run: InferenceRun, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Split the run's keyframes into chunks of ``chunk_size`` consecutive ids, once:
    a second call (another worker, a resumed job) finds them planned and returns their
    number. Keyframes added later get ids above every chunk and wait for the next run."""
    run.refresh_from_db()
    if run.n_chunks:
        return run.n_chunks
    with transaction.atomic():
        # The lock (or, on SQLite, the write lock this UPDATE takes) serialises planners.
        InferenceRun.objects.filter(pk=run.pk).update(n_chunks=0)
        if InferenceChunk.objects.filter(run=run).exists():
            run.refresh_from_db()
            return run.n_chunks
        ids = keyframes(run.collection_ids).order_by("pk").values_list("pk", flat=True)
        rows: list[InferenceChunk] = []
        buffer: list[int] = []
        number = total = 0

        def flush_chunk() -> None:
            nonlocal number
            rows.append(
                InferenceChunk(
                    run=run,
                    number=number,
                    first_image_id=buffer[0],
                    last_image_id=buffer[-1],
                    n_images=len(buffer),
                )
            )
            number += 1
            buffer.clear()
            if len(rows) >= 1000:
                InferenceChunk.objects.bulk_create(rows)
                rows.clear()

        for pk in ids.iterator(chunk_size=20000):
            buffer.append(pk)
            total += 1
            if len(buffer) >= chunk_size:
                flush_chunk()
        if buffer:
            flush_chunk()
        InferenceChunk.objects.bulk_create(rows)
        InferenceRun.objects.filter(pk=run.pk).update(n_chunks=number, n_images=total)
    run.n_chunks, run.n_images = number, total
    return number


def worker_token(job_id: int | None = None) -> str:
    """Names one claimant: host, process, job and a random part (two jobs in one process
    — tests — stay apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:job{job_id}:{uuid.uuid4().hex[:8]}"


def _stale_limit():
    return timezone.now() - timedelta(seconds=settings.VIVA_JOB_HEARTBEAT_TIMEOUT)


def claim_chunk(run: InferenceRun | int, token: str) -> InferenceChunk | None:
    """Atomically take the lowest pending chunk of the run (or a claimed one whose
    holder stopped beating); ``None`` when there is none to take right now."""
    run_id = run.pk if isinstance(run, InferenceRun) else run
    now = timezone.now()
    fields = {
        "status": InferenceChunk.Status.CLAIMED,
        "claimed_by": token,
        "claimed_at": now,
        "heartbeat_at": now,
    }
    for _attempt in range(50):
        pending = InferenceChunk.objects.filter(run_id=run_id, status=InferenceChunk.Status.PENDING)
        stale = InferenceChunk.objects.filter(
            run_id=run_id, status=InferenceChunk.Status.CLAIMED, heartbeat_at__lt=_stale_limit()
        )
        pk = pending.order_by("number").values_list("pk", flat=True).first()
        if pk is not None:
            taken = InferenceChunk.objects.filter(
                pk=pk, status=InferenceChunk.Status.PENDING
            ).update(**fields)
        else:
            candidate = stale.order_by("number").values_list("pk", "heartbeat_at").first()
            if candidate is None:
                return None
            pk = candidate[0]
            # Compare-and-set on the old heartbeat: two workers cannot both take it.
            taken = InferenceChunk.objects.filter(
                pk=pk, status=InferenceChunk.Status.CLAIMED, heartbeat_at=candidate[1]
            ).update(**fields)
        if taken:
            return InferenceChunk.objects.get(pk=pk)
    return None


def beat(chunk: InferenceChunk, token: str) -> bool:
    """Refresh the claim; False if another worker has taken the chunk over."""
    return bool(
        InferenceChunk.objects.filter(
            pk=chunk.pk, status=InferenceChunk.Status.CLAIMED, claimed_by=token
        ).update(heartbeat_at=timezone.now())
    )


def release_chunk(chunk: InferenceChunk, token: str) -> None:
    """Give a claimed chunk back (cancel, error), so the next worker need not wait for
    the heartbeat timeout."""
    InferenceChunk.objects.filter(
        pk=chunk.pk, status=InferenceChunk.Status.CLAIMED, claimed_by=token
    ).update(status=InferenceChunk.Status.PENDING, claimed_by="", heartbeat_at=None)


def chunk_images(chunk: InferenceChunk, run: InferenceRun | None = None) -> list[tuple[int, str]]:
    """``[(image id, file)]`` of the chunk's keyframes, in id order."""
    run = run or chunk.run
    return list(
        keyframes(run.collection_ids)
        .filter(pk__gte=chunk.first_image_id, pk__lte=chunk.last_image_id)
        .order_by("pk")
        .values_list("pk", "file")
    )


@dataclass
class ScoredChunk:
    image_ids: np.ndarray  # (n,) readable images
    probabilities: np.ndarray  # (n, K) sigmoid scores
    failed: list[tuple[int, str]] = field(default_factory=list)  # (image id, message)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))).astype(np.float32)


def score_images(
    model,
    preprocessing,
    images: Sequence[tuple[int, str]],
    *,
    device="cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int = 0,
    root=None,
    on_batch: Callable[[int], None] | None = None,
) -> ScoredChunk:
    """Read, decode, resize, forward: sigmoid scores of the readable images. Uses the
    training app's loader (the version's own preprocessing) and scorer."""
    import torch

    from training.dataset import ImageFileDataset, make_loader
    from training.scoring import predict_loader

    ids = np.asarray([i for i, _ in images], dtype=np.int64)
    if not len(ids):
        return ScoredChunk(ids, np.zeros((0, 0), np.float32))
    dummy = np.zeros((len(ids), 1), dtype=np.int8)
    dataset = ImageFileDataset([f for _, f in images], dummy, preprocessing, root=root)
    dev = torch.device(device)
    loader = make_loader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )
    failed: list[tuple[int, str]] = []
    indices, logits = predict_loader(
        model,
        loader,
        dev,
        amp=dev.type == "cuda",
        on_batch=on_batch,
        on_failed=lambda items: failed.extend((int(ids[i]), msg) for i, msg in items),
    )
    del loader  # stops the loader processes
    return ScoredChunk(ids[indices], sigmoid(logits), sorted(failed))


def prediction_rows(
    run_id: int,
    image_ids: np.ndarray,
    probabilities: np.ndarray,
    category_ids: Sequence[int],
    floor: float,
) -> list[Prediction]:
    """One row per (image, category) with score ≥ floor."""
    if not len(image_ids):
        return []
    rows, cols = np.nonzero(probabilities >= floor)
    cats = np.asarray(category_ids, dtype=np.int64)
    return [
        Prediction(run_id=run_id, image_id=int(i), category_id=int(c), score=float(s))
        for i, c, s in zip(
            image_ids[rows].tolist(),
            cats[cols].tolist(),
            probabilities[rows, cols].tolist(),
            strict=True,
        )
    ]


def write_chunk(
    chunk: InferenceChunk,
    token: str,
    scored: ScoredChunk,
    category_ids: Sequence[int],
    floor: float,
) -> bool:
    """Store a chunk's predictions and mark it done, in one transaction — only while
    ``token`` still holds the claim (``False`` otherwise: another worker took the chunk
    over after this one was presumed dead, and it writes the chunk instead)."""
    rows = prediction_rows(
        chunk.run_id, scored.image_ids, scored.probabilities, category_ids, floor
    )
    with transaction.atomic():
        marked = InferenceChunk.objects.filter(
            pk=chunk.pk, status=InferenceChunk.Status.CLAIMED, claimed_by=token
        ).update(
            status=InferenceChunk.Status.DONE,
            done_at=timezone.now(),
            heartbeat_at=timezone.now(),
            n_scored=len(scored.image_ids),
            n_skipped=len(scored.failed),
            n_predictions=len(rows),
        )
        if not marked:
            return False
        Prediction.objects.filter(
            run_id=chunk.run_id,
            image_id__gte=chunk.first_image_id,
            image_id__lte=chunk.last_image_id,
        ).delete()
        Prediction.objects.bulk_create(rows, batch_size=INSERT_BATCH)
    return True


def run_progress(run: InferenceRun | int) -> tuple[int, int]:
    """``(images in done chunks, images of the run)``."""
    run_id = run.pk if isinstance(run, InferenceRun) else run
    done = (
        InferenceChunk.objects.filter(run_id=run_id, status=InferenceChunk.Status.DONE).aggregate(
            n=Sum("n_images")
        )["n"]
        or 0
    )
    total = InferenceRun.objects.filter(pk=run_id).values_list("n_images", flat=True).first()
    return int(done), int(total or 0)


def chunks_left(run: InferenceRun | int) -> int:
    run_id = run.pk if isinstance(run, InferenceRun) else run
    return (
        InferenceChunk.objects.filter(run_id=run_id)
        .exclude(status=InferenceChunk.Status.DONE)
        .count()
    )


# --- completion ---------------------------------------------------------------------------
def finish_run(run: InferenceRun | int) -> bool:
    """Complete and publish the run if every chunk is done (True only for the caller
    that did it). The previously published run of the kind is unpublished in the same
    transaction, so retrieval switches from the complete old run to the complete new one
    in one step; its predictions are deleted afterwards (:func:`purge_superseded`)."""
    run_id = run.pk if isinstance(run, InferenceRun) else run
    with transaction.atomic():
        if chunks_left(run_id):
            return False
        totals = InferenceChunk.objects.filter(run_id=run_id).aggregate(
            scored=Sum("n_scored"), skipped=Sum("n_skipped"), predictions=Sum("n_predictions")
        )
        now = timezone.now()
        won = InferenceRun.objects.filter(
            pk=run_id, status=InferenceRun.Status.RUNNING, n_chunks__gt=0
        ).update(
            status=InferenceRun.Status.COMPLETE,
            completed_at=now,
            n_scored=totals["scored"] or 0,
            n_skipped=totals["skipped"] or 0,
            n_predictions=totals["predictions"] or 0,
        )
        if not won:
            return False
        kind = InferenceRun.objects.filter(pk=run_id).values_list("kind", flat=True).get()
        InferenceRun.objects.filter(kind=kind, is_published=True).exclude(pk=run_id).update(
            is_published=False, status=InferenceRun.Status.SUPERSEDED
        )
        InferenceRun.objects.filter(pk=run_id).update(is_published=True, published_at=now)
    return True


def published_run(kind: str = ModelVersion.Kind.CONCEPT) -> InferenceRun | None:
    return (
        InferenceRun.objects.filter(kind=kind, is_published=True)
        .select_related("model_version")
        .first()
    )


def purge_superseded(kind: str = ModelVersion.Kind.CONCEPT) -> int:
    """Delete the predictions of superseded and abandoned runs, chunk range by chunk
    range (short transactions on a 15 M keyframe archive); the run rows stay as history.
    Idempotent. Returns the rows deleted."""
    deleted = 0
    runs = InferenceRun.objects.filter(
        kind=kind,
        is_published=False,
        status__in=[InferenceRun.Status.SUPERSEDED, InferenceRun.Status.FAILED],
    )
    for run in runs:
        if not Prediction.objects.filter(run=run).exists():
            continue
        for first, last in run.chunks.values_list("first_image_id", "last_image_id"):
            with transaction.atomic():
                deleted += Prediction.objects.filter(
                    run=run, image_id__gte=first, image_id__lte=last
                ).delete()[0]
        deleted += Prediction.objects.filter(run=run).delete()[0]
    return deleted


# --- the worker loop ------------------------------------------------------------------------
@dataclass
class WorkerStats:
    chunks: int = 0
    scored: int = 0
    skipped: int = 0
    predictions: int = 0
    lost: int = 0
    seconds: float = 0.0


def work_on_run(
    run: InferenceRun,
    *,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int = 0,
    token: str | None = None,
    ctx=None,
    max_chunks: int | None = None,
    wait_interval: float = 2.0,
    monitor=None,
) -> WorkerStats:
    """Claim, score and write chunks until none is left (or ``max_chunks``), then finish
    the run. While other workers hold the last chunks it waits, and takes them over when
    their holder stops beating. ``ctx`` is a :class:`viva.jobs.JobContext` (progress,
    metrics, log, cancellation) or ``None``."""
    from training.scoring import load_network

    token = token or worker_token(getattr(ctx, "job_id", None))
    version = run.model_version
    category_ids = [int(c["id"]) for c in sorted(version.class_map, key=lambda c: c["index"])]
    model, pre = load_network(version, device)
    stats = WorkerStats()
    started = time.monotonic()
    say = ctx.log if ctx is not None else log.info
    while max_chunks is None or stats.chunks < max_chunks:
        chunk = claim_chunk(run, token)
        if chunk is None:
            if finish_run(run):
                say(f"All {run.n_chunks} chunks are done; the run is published.")
                break
            if not chunks_left(run):
                break  # another worker finished it
            # Other workers hold the last chunks: wait for them (or for their claims to
            # go stale, then take those chunks over).
            if ctx is not None:
                done, total = run_progress(run)
                ctx.progress(done, total, note="Waiting for other workers' last chunks …")
                ctx.check_cancelled()
            time.sleep(wait_interval)
            continue
        try:
            stats_chunk = _do_chunk(
                chunk, run, token, model, pre, category_ids, device, batch_size, num_workers, ctx
            )
        except BaseException:
            release_chunk(chunk, token)
            raise
        if stats_chunk is None:
            stats.lost += 1
            say(f"Chunk {chunk.number} was taken over by another worker; its result is theirs.")
            continue
        n, seconds, scored = stats_chunk
        stats.chunks += 1
        stats.scored += len(scored.image_ids)
        stats.skipped += len(scored.failed)
        stats.predictions += n
        if ctx is not None:
            ctx.metric("images/s", round(time.monotonic() - started, 1), chunk.n_images / seconds)
            if monitor is not None:
                monitor.drain(ctx)
    stats.seconds = time.monotonic() - started
    return stats


def _do_chunk(chunk, run, token, model, pre, category_ids, device, batch_size, workers, ctx):
    images = chunk_images(chunk, run)
    done_before, total = run_progress(run)
    t0 = time.monotonic()
    last_beat = [t0]
    seen = [0]

    def on_batch(n: int) -> None:
        seen[0] += n
        now = time.monotonic()
        if now - last_beat[0] >= CHUNK_BEAT_SECONDS:
            last_beat[0] = now
            beat(chunk, token)
        if ctx is not None:
            ctx.progress(
                done_before + seen[0],
                total,
                note=f"Chunk {chunk.number + 1} of {run.n_chunks} (images "
                f"{chunk.first_image_id}–{chunk.last_image_id})",
            )

    scored = score_images(
        model,
        pre,
        images,
        device=device,
        batch_size=batch_size,
        num_workers=workers,
        on_batch=on_batch,
    )
    vanished = chunk.n_images - len(images)
    for image_id, message in scored.failed[:MAX_LOGGED_FAILURES]:
        text = f"Skipped unreadable keyframe #{image_id}: {message}"
        ctx.log(text) if ctx is not None else log.warning(text)
    if len(scored.failed) > MAX_LOGGED_FAILURES:
        text = f"… and {len(scored.failed) - MAX_LOGGED_FAILURES} more unreadable keyframes."
        ctx.log(text) if ctx is not None else log.warning(text)
    if vanished > 0 and ctx is not None:
        ctx.log(f"Chunk {chunk.number}: {vanished} keyframes were deleted since planning.")
    if not write_chunk(chunk, token, scored, category_ids, run.score_floor):
        return None
    seconds = max(time.monotonic() - t0, 1e-6)
    n = InferenceChunk.objects.filter(pk=chunk.pk).values_list("n_predictions", flat=True).get()
    return n, seconds, scored
