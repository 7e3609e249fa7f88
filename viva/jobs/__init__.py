"""The job mechanism every long task uses: one `Job` row, a registered handler, a Celery task.

Apps register handlers in their ``job_handlers`` module with :func:`job_handler`; the web
side calls :func:`start_job`; a worker runs :func:`run_job`. See ``runner`` for the rules.
"""

from .registry import JobError, job_handler
from .runner import (
    JobCancelled,
    JobContext,
    cancel_job,
    reap_stale_jobs,
    resume_job,
    run_job,
    start_job,
)

__all__ = [
    "JobCancelled",
    "JobContext",
    "JobError",
    "cancel_job",
    "job_handler",
    "reap_stale_jobs",
    "resume_job",
    "run_job",
    "start_job",
]
