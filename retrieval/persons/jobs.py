"""Job handler of person inference (queue ``default``: the SVM runs on stored embeddings,
no GPU). A thin wrapper around :func:`retrieval.persons.inference.work_on_run`."""

from __future__ import annotations

from viva.jobs import JobContext, JobError, job_handler

from ..inference import purge_superseded, run_progress, worker_token
from ..models import InferenceRun
from .inference import DEFAULT_CHUNK_SIZE, JOB_KIND, class_map_problem, plan_chunks, work_on_run


def _summary(run: InferenceRun) -> dict:
    return {
        "summary": (
            f"{run.model_version} recognised {run.n_predictions} (keyframe, person) pairs "
            f"among {run.n_scored} faces in {run.n_images} keyframes; faces below the "
            f"threshold {run.score_floor:.2f} were rejected as unknown. The run is "
            f"{'published' if run.is_published else run.get_status_display().lower()}."
        ),
        "run_id": run.pk,
        "version": run.model_version.version,
        "n_images": run.n_images,
        "n_faces": run.n_scored,
        "n_predictions": run.n_predictions,
        "threshold": run.score_floor,
        "published": run.is_published,
    }


@job_handler(JOB_KIND, queue="default", label="person inference")
def infer_persons_job(ctx: JobContext) -> dict:
    """Idempotent and resumable: done chunks stay done; a finished run returns its
    summary at once."""
    run = (
        InferenceRun.objects.select_related("model_version")
        .filter(pk=ctx.params.get("run_id"))
        .first()
    )
    if run is None:
        raise JobError("The person inference run of this job no longer exists.")
    if run.status in (InferenceRun.Status.COMPLETE, InferenceRun.Status.SUPERSEDED):
        ctx.log("The run is already complete; nothing to do.")
        return _summary(run)
    if run.status == InferenceRun.Status.FAILED:
        raise JobError(f"Person inference run {run.pk} was abandoned for a newer one.")
    problem = class_map_problem(run.model_version)
    if problem:
        raise JobError(problem)
    n_chunks = plan_chunks(run, int(ctx.params.get("chunk_size") or DEFAULT_CHUNK_SIZE))
    done, total = run_progress(run)
    ctx.log(
        f"Recognising persons with {run.model_version}: {run.n_images} keyframes with faces "
        f"in {n_chunks} chunks, {done} already done; rejection threshold {run.score_floor:.3f}."
    )
    ctx.progress(done, total, note="Loading the person model …")
    stats = work_on_run(run, token=worker_token(ctx.job_id), ctx=ctx)
    ctx.log(
        f"This worker recognised {stats.faces} faces in {stats.chunks} chunks "
        f"({stats.rejected} rejected as unknown) in {stats.seconds:.1f} s."
    )
    run.refresh_from_db()
    if run.is_published:
        deleted = purge_superseded(run.kind)
        if deleted:
            ctx.log(f"Deleted {deleted} predictions of superseded person runs.")
    return _summary(run)
