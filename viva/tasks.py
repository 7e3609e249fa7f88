"""Celery tasks of the core: one generic, thin task that runs any registered job by id."""

from celery import shared_task

from .jobs.runner import reap_stale_jobs, run_job


@shared_task(name="viva.run_job", acks_late=True)
def run_job_task(job_id: int) -> str:
    return run_job(job_id)


@shared_task(name="viva.reap_stale_jobs")
def reap_stale_jobs_task() -> int:
    return reap_stale_jobs()
