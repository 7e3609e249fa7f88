"""Job handler of person recognition training (queue ``default``: an SVM on embeddings
needs no GPU). A thin wrapper around :func:`training.persons.service.train_persons`."""

from __future__ import annotations

from viva.jobs import JobContext, job_handler

from ..models import ModelVersion
from .service import JOB_KIND, train_persons


@job_handler(JOB_KIND, queue="default", label="person training")
def train_persons_job(ctx: JobContext) -> dict:
    """Idempotent: a redelivered job that already registered its version returns it;
    otherwise the (deterministic, seeded) run starts again from the beginning."""
    done = ModelVersion.objects.filter(job_id=ctx.job_id, kind=ModelVersion.Kind.PERSON).first()
    if done is not None:
        ctx.log(f"This job already saved {done}; nothing to do.")
        return {
            "summary": f"Already saved as {done}.",
            "model_version_id": done.pk,
            "version": done.version,
            "mAP": done.mean_ap,
            "active": done.is_active,
        }
    return train_persons(ctx)
