"""Job handler of concept inference: a thin wrapper around
:func:`retrieval.inference.work_on_run` (one job per worker/device; several jobs may
share one run)."""

from __future__ import annotations

from viva.jobs import JobContext, JobError, job_handler

from .inference import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SIZE,
    JOB_KIND,
    class_map_problem,
    plan_chunks,
    purge_superseded,
    run_progress,
    work_on_run,
    worker_token,
)
from .models import InferenceRun


def _summary(run: InferenceRun) -> dict:
    return {
        "summary": (
            f"{run.model_version} scored {run.n_scored} keyframes in {run.n_chunks} chunks "
            f"({run.n_skipped} unreadable, skipped); {run.n_predictions} predictions stored "
            f"(scores ≥ {run.score_floor:g}); the run is "
            f"{'published' if run.is_published else run.get_status_display().lower()}."
        ),
        "run_id": run.pk,
        "version": run.model_version.version,
        "n_images": run.n_images,
        "n_scored": run.n_scored,
        "n_skipped": run.n_skipped,
        "n_predictions": run.n_predictions,
        "published": run.is_published,
        # Share of (keyframe, concept) scores at or above the floor: what storage costs
        # (docs/prediction-storage.md plans with 5 %).
        "stored_fraction": round(
            run.n_predictions / max(1, run.n_scored * run.model_version.num_classes), 4
        ),
    }


@job_handler(JOB_KIND, queue="gpu", label="concept inference")
def infer_concepts_job(ctx: JobContext) -> dict:
    """Idempotent and shareable: chunks already done stay done; a second job on the same
    run claims the remaining ones; a finished run returns its summary at once."""
    from training.devices import local_device_exists

    run = (
        InferenceRun.objects.select_related("model_version")
        .filter(pk=ctx.params.get("run_id"))
        .first()
    )
    if run is None:
        raise JobError("The inference run of this job no longer exists.")
    if run.status in (InferenceRun.Status.COMPLETE, InferenceRun.Status.SUPERSEDED):
        ctx.log("The run is already complete; nothing to do.")
        return _summary(run)
    if run.status == InferenceRun.Status.FAILED:
        raise JobError(
            f"Inference run {run.pk} was abandoned (a newer run was started); nothing to do."
        )
    device = ctx.params.get("device") or "cpu"
    if not local_device_exists(device):
        raise JobError(
            f"The device {device} does not exist on the worker that took this job "
            f"({ctx.job.worker or 'unknown'}); start inference on another device."
        )
    problem = class_map_problem(run.model_version)
    if problem:
        raise JobError(problem)
    ctx.set_device(device)
    n_chunks = plan_chunks(run, int(ctx.params.get("chunk_size") or DEFAULT_CHUNK_SIZE))
    done, total = run_progress(run)
    ctx.log(
        f"Inference of {run.model_version} on {device}: {run.n_images} keyframes in "
        f"{n_chunks} chunks, {done} already scored; storing scores ≥ {run.score_floor:g}."
    )
    ctx.progress(done, total, note="Loading the model …")
    import torch

    from training.monitor import UtilisationMonitor

    threads = ctx.params.get("cpu_threads")
    if threads:
        torch.set_num_threads(int(threads))
    monitor = UtilisationMonitor(device)
    monitor.start()
    try:
        stats = work_on_run(
            run,
            device=device,
            batch_size=int(ctx.params.get("batch_size") or DEFAULT_BATCH_SIZE),
            num_workers=int(ctx.params.get("workers") or 0),
            token=worker_token(ctx.job_id),
            ctx=ctx,
            monitor=monitor,
        )
    finally:
        monitor.stop()
    monitor.drain(ctx)
    ctx.log(
        f"This worker scored {stats.chunks} chunks ({stats.scored} keyframes, "
        f"{stats.skipped} unreadable) in {stats.seconds:.1f} s."
    )
    run.refresh_from_db()
    if run.is_published:
        deleted = purge_superseded(run.kind)
        if deleted:
            ctx.log(f"Deleted {deleted} predictions of superseded runs.")
    result = _summary(run)
    result["worker"] = {
        "chunks": stats.chunks,
        "scored": stats.scored,
        "skipped": stats.skipped,
        "predictions": stats.predictions,
        "seconds": round(stats.seconds, 2),
    }
    return result


from . import export_jobs  # noqa: E402, F401  (export_segments, export_dataset)

# Job handlers of the similarity-search and person packages register on import.
from .face_search import jobs as _face_search_jobs  # noqa: E402,F401
from .hashing import jobs as _hashing_jobs  # noqa: E402,F401
from .persons import jobs as _person_jobs  # noqa: E402,F401
from .search import jobs as _search_jobs  # noqa: E402,F401
