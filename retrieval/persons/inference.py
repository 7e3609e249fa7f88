"""Person inference: the active person model over every embedded face of the archive's
keyframes (issue 7, item 4).

It reuses the concept runs' machinery (:mod:`retrieval.inference`): an
:class:`~retrieval.models.InferenceRun` of kind ``person`` split into chunks, claimed
atomically, written in the transaction that marks the chunk done, completed and
published by the worker that sees the last chunk done, superseded runs purged. What
differs:

* chunks are ranges of *image* ids of keyframes that have embedded faces — not face
  ids, because a prediction is one row per (image, person) holding the image's best
  face, and all faces of an image must be scored in the same chunk to pick it;
* a face is recognised as the person with the highest probability only when that
  probability reaches the version's rejection threshold (stored as the run's
  ``score_floor``); unknown faces produce no prediction at all;
* ``InferenceChunk.n_scored`` counts *faces* scored (``n_images`` stays images).

No torch: the SVM runs on stored embeddings, so the job runs on the ``default`` queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from training.models import ModelVersion
from training.registry import active_version
from viva.jobs import start_job
from viva.models import Face, Job

from ..inference import (
    InferenceRefused,
    beat,
    chunks_left,
    claim_chunk,
    class_map_problem,
    finish_run,
    release_chunk,
    run_progress,
    worker_token,
)
from ..models import InferenceChunk, InferenceRun, Prediction

log = logging.getLogger(__name__)

JOB_KIND = "infer_persons"
KIND = ModelVersion.Kind.PERSON
DEFAULT_CHUNK_SIZE = 5000  # images; a chunk's faces are scored in one SVM call
INSERT_BATCH = 5000


def archive_faces(version: ModelVersion | None = None):
    """Faces inference scores: embedded faces of keyframes — with a version, only those of
    the embedder it was trained on (``config["embedder"]``; embeddings of other weights
    are not comparable, their scores would be noise). Versions trained before the key
    existed score every face."""
    faces = Face.objects.filter(embedding__isnull=False, image__video__isnull=False)
    config = (version.config or {}) if version is not None else {}
    if "embedder" in config:
        faces = faces.filter(embedder=config["embedder"] or "")
    return faces


def active_jobs(run: InferenceRun):
    return Job.objects.filter(kind=JOB_KIND, status__in=Job.ACTIVE, params__run_id=run.pk)


def unfinished_run() -> InferenceRun | None:
    return (
        InferenceRun.objects.filter(kind=KIND, status=InferenceRun.Status.RUNNING)
        .select_related("model_version")
        .order_by("-created_at")
        .first()
    )


# --- starting (web side) -------------------------------------------------------------------
def start_person_inference(user, options: dict | None = None) -> Job:
    """Start (or continue) recognising every archive face with the active person model.

    Refuses (no job) without an active person model, with persons deleted since it was
    trained, without embedded faces, or while a run is in progress. An unfinished run
    of the same model *and threshold* continues; any other unfinished run is abandoned."""
    options = dict(options or {})
    try:
        chunk_size = int(options.get("chunk_size") or DEFAULT_CHUNK_SIZE)
    except (TypeError, ValueError) as exc:
        raise InferenceRefused(f"Bad chunk size: {exc}.") from exc
    if not 1 <= chunk_size <= 1_000_000:
        raise InferenceRefused("The chunk size must be between 1 and 1,000,000.")
    version = active_version(KIND)
    if version is None:
        raise InferenceRefused("There is no active person model; train persons first.")
    problem = class_map_problem(version)
    if problem:
        raise InferenceRefused(problem)
    if not archive_faces(version).exists():
        if archive_faces().exists():
            raise InferenceRefused(
                f"There is nothing to recognise: no keyframe face was embedded by "
                f"'{version.config.get('embedder') or 'unknown'}', the embedder {version} was "
                "trained on. Train the person model again on the current faces."
            )
        raise InferenceRefused(
            "There is nothing to recognise: no keyframe has an embedded face yet (run face "
            "detection and embedding first)."
        )
    threshold = float((version.config or {}).get("threshold", 0.5))
    with transaction.atomic():
        current = unfinished_run()
        if current is not None and active_jobs(current).exists():
            job = active_jobs(current).order_by("created_at").first()
            raise InferenceRefused(
                f"Person inference run {current.pk} is in progress (job {job.pk}); wait for "
                "it or cancel it."
            )
        run = None
        if (
            current is not None
            and current.model_version_id == version.pk
            and current.score_floor == threshold
        ):
            run = current
        elif current is not None:
            InferenceRun.objects.filter(pk=current.pk).update(status=InferenceRun.Status.FAILED)
        if run is None:
            run = InferenceRun.objects.create(
                kind=KIND, model_version=version, score_floor=threshold
            )
        job = start_job(
            JOB_KIND,
            {"run_id": run.pk, "chunk_size": chunk_size},
            user=user,
            title=f"Person recognition ({version}) over the archive's faces",
        )
        InferenceRun.objects.filter(pk=run.pk).update(job=job)
    return job


# --- chunks (worker side) ------------------------------------------------------------------
def plan_chunks(run: InferenceRun, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Split the keyframes with embedded faces into chunks of ``chunk_size`` consecutive
    image ids, once (a second call finds them planned)."""
    run.refresh_from_db()
    if run.n_chunks:
        return run.n_chunks
    with transaction.atomic():
        InferenceRun.objects.filter(pk=run.pk).update(n_chunks=0)  # serialises planners
        if InferenceChunk.objects.filter(run=run).exists():
            run.refresh_from_db()
            return run.n_chunks
        ids = (
            archive_faces(run.model_version)
            .order_by("image_id")
            .values_list("image_id", flat=True)
            .distinct()
        )
        rows: list[InferenceChunk] = []
        buffer: list[int] = []
        total = 0
        for pk in ids.iterator(chunk_size=20000):
            buffer.append(pk)
            total += 1
            if len(buffer) >= chunk_size:
                rows.append(_chunk(run, len(rows), buffer))
                buffer = []
        if buffer:
            rows.append(_chunk(run, len(rows), buffer))
        InferenceChunk.objects.bulk_create(rows, batch_size=1000)
        InferenceRun.objects.filter(pk=run.pk).update(n_chunks=len(rows), n_images=total)
    run.n_chunks, run.n_images = len(rows), total
    return len(rows)


def _chunk(run: InferenceRun, number: int, ids: list[int]) -> InferenceChunk:
    return InferenceChunk(
        run=run, number=number, first_image_id=ids[0], last_image_id=ids[-1], n_images=len(ids)
    )


@dataclass
class RecognisedChunk:
    faces: int
    rows: list[Prediction]
    rejected: int


def recognise_chunk(
    chunk: InferenceChunk,
    model,
    category_ids: Sequence[int],
    version: ModelVersion | None = None,
) -> RecognisedChunk:
    """Score the chunk's faces (of ``version``'s embedder); per (image, person) keep the
    best accepted face."""
    faces = list(
        archive_faces(version if version is not None else chunk.run.model_version)
        .filter(image_id__gte=chunk.first_image_id, image_id__lte=chunk.last_image_id)
        .order_by("pk")
        .values_list("pk", "image_id", "embedding")
    )
    if not faces:
        return RecognisedChunk(0, [], 0)
    x = Face.unpack_embeddings(f[2] for f in faces)
    result = model.recognise(x)
    best: dict[tuple[int, int], tuple[float, int]] = {}
    for (face_id, image_id, _), index, prob, ok in zip(
        faces,
        result.index.tolist(),
        result.probability.tolist(),
        result.accepted.tolist(),
        strict=True,
    ):
        if not ok:
            continue
        key = (image_id, int(category_ids[index]))
        if key not in best or prob > best[key][0]:
            best[key] = (prob, face_id)
    rows = [
        Prediction(
            run_id=chunk.run_id, image_id=image_id, category_id=cat, score=prob, face_id=face_id
        )
        for (image_id, cat), (prob, face_id) in best.items()
    ]
    return RecognisedChunk(len(faces), rows, int((~result.accepted).sum()))


def write_chunk(chunk: InferenceChunk, token: str, done: RecognisedChunk) -> bool:
    """Store the chunk's predictions and mark it done in one transaction, only while
    ``token`` holds the claim."""
    with transaction.atomic():
        marked = InferenceChunk.objects.filter(
            pk=chunk.pk, status=InferenceChunk.Status.CLAIMED, claimed_by=token
        ).update(
            status=InferenceChunk.Status.DONE,
            done_at=timezone.now(),
            heartbeat_at=timezone.now(),
            n_scored=done.faces,
            n_skipped=0,
            n_predictions=len(done.rows),
        )
        if not marked:
            return False
        Prediction.objects.filter(
            run_id=chunk.run_id,
            image_id__gte=chunk.first_image_id,
            image_id__lte=chunk.last_image_id,
        ).delete()
        Prediction.objects.bulk_create(done.rows, batch_size=INSERT_BATCH)
    return True


@dataclass
class WorkerStats:
    chunks: int = 0
    faces: int = 0
    rejected: int = 0
    predictions: int = 0
    seconds: float = 0.0


def work_on_run(
    run: InferenceRun,
    *,
    token: str | None = None,
    ctx=None,
    max_chunks: int | None = None,
    wait_interval: float = 2.0,
) -> WorkerStats:
    """Claim, recognise and write chunks until none is left (or ``max_chunks``), then
    complete and publish the run."""
    from training.persons.service import load_model

    token = token or worker_token(getattr(ctx, "job_id", None))
    version = run.model_version
    model = load_model(version)
    model.threshold = run.score_floor  # the threshold this run was started with
    category_ids = [int(c["id"]) for c in sorted(version.class_map, key=lambda c: c["index"])]
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
                break
            if ctx is not None:
                done, total = run_progress(run)
                ctx.progress(done, total, note="Waiting for other workers' last chunks …")
                ctx.check_cancelled()
            time.sleep(wait_interval)
            continue
        try:
            recognised = recognise_chunk(chunk, model, category_ids, version)
            beat(chunk, token)
            written = write_chunk(chunk, token, recognised)
        except BaseException:
            release_chunk(chunk, token)
            raise
        if not written:
            say(f"Chunk {chunk.number} was taken over by another worker.")
            continue
        stats.chunks += 1
        stats.faces += recognised.faces
        stats.rejected += recognised.rejected
        stats.predictions += len(recognised.rows)
        if ctx is not None:
            done, total = run_progress(run)
            ctx.progress(
                done, total, note=f"Chunk {chunk.number + 1} of {run.n_chunks}: images done"
            )
            elapsed = max(time.monotonic() - started, 1e-6)
            ctx.metric("faces/s", round(elapsed, 1), stats.faces / elapsed)
    stats.seconds = time.monotonic() - started
    return stats
