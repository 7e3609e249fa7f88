"""Job handler of concept training: a thin wrapper around :func:`training.trainer.train`."""

from __future__ import annotations

from viva.jobs import JobContext, job_handler

from .config import TrainConfig
from .devices import busy_job
from .errors import TrainingError
from .models import ModelVersion
from .services import JOB_KIND


@job_handler(JOB_KIND, queue="gpu", label="concept training")
def train_concepts_job(ctx: JobContext) -> dict:
    """Idempotent: if this job already registered a version (a redelivered task after
    the save), that result is returned; otherwise training starts from the beginning."""
    from .trainer import train

    done = ModelVersion.objects.filter(job_id=ctx.job_id).first()
    if done is not None:
        ctx.log(f"This job already saved {done}; nothing to do.")
        return {
            "summary": f"Already saved as {done}.",
            "model_version_id": done.pk,
            "version": done.version,
            "mAP": done.mean_ap,
            "active": done.is_active,
        }
    try:
        config = TrainConfig.from_options(ctx.params)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    other = busy_job(config.device, exclude=ctx.job_id)
    if other is not None and other.status != other.Status.QUEUED:
        raise TrainingError(
            f"{config.device} is busy with job {other.pk} (“{other}”); one run per device."
        )
    return train(ctx, config)


# Job handlers of the face pipeline and person recognition register on import.
from .faces import jobs as _face_jobs  # noqa: E402,F401
from .persons import jobs as _person_jobs  # noqa: E402,F401
