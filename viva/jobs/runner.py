"""Running jobs: claiming, progress, heartbeat, cancellation, failure and resumption.

Rules (DESIGN.md section 8): tasks receive ids; the row is the single source of truth;
a worker writes only the fields it owns with ``UPDATE … WHERE pk`` so a cancel request
written by the web process is never overwritten; a background thread beats the heart
while the handler runs, so a job whose worker died is recognisable by a stale heartbeat.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from ..models import Job
from .registry import JobError, get_kind

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 300
FLUSH_INTERVAL = 0.5
HEARTBEAT_INTERVAL = 10.0


class JobCancelled(Exception):
    """Raised inside a handler when the user asked to cancel the job."""


class JobContext:
    """What a handler gets: parameters, progress, log, metrics and the cancel check."""

    def __init__(self, job: Job):
        self.job = job
        self.job_id = job.pk
        self.params: dict[str, Any] = dict(job.params or {})
        self.progress_value = job.progress
        self.total = job.total
        self.note = job.progress_note
        self.metrics: dict[str, list] = dict(job.metrics or {})
        self._log_lines: list[str] = job.log_tail.splitlines() if job.log_tail else []
        self._dirty = False
        self._last_flush = 0.0
        self._cancel_seen = False
        self.device = job.device

    # --- progress -----------------------------------------------------------------
    def set_total(self, total: int, note: str | None = None) -> None:
        self.total = int(total)
        if note is not None:
            self.note = note
        self.flush()

    def progress(self, done: int, total: int | None = None, note: str | None = None) -> None:
        """Report absolute progress; cheap to call often (writes are throttled)."""
        self.progress_value = int(done)
        if total is not None:
            self.total = int(total)
        if note is not None:
            self.note = note[:300]
        self._dirty = True
        self._maybe_flush()

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.progress(self.progress_value + n, note=note)

    def metric(self, series: str, step: float, value: float) -> None:
        """Append a point to a named series (training loss, mAP, throughput …)."""
        self.metrics.setdefault(series, []).append([step, float(value)])
        self._dirty = True
        self._maybe_flush()

    def log(self, message: str) -> None:
        stamp = timezone.localtime().strftime("%H:%M:%S")
        for line in str(message).splitlines() or [""]:
            self._log_lines.append(f"{stamp} {line}")
        del self._log_lines[:-LOG_TAIL_LINES]
        log.info("job %s: %s", self.job_id, message)
        self._dirty = True
        self._maybe_flush(may_cancel=False)

    def set_device(self, device: str) -> None:
        self.device = device
        Job.objects.filter(pk=self.job_id).update(device=device)

    # --- cancellation ---------------------------------------------------------------
    @property
    def cancel_requested(self) -> bool:
        """What the last flush learned; for code that polls instead of calling progress."""
        return self._cancel_seen

    def check_cancelled(self) -> None:
        """An explicit cancellation point (always asks the database)."""
        self.flush()
        if self._cancel_seen:
            raise JobCancelled()

    def _maybe_flush(self, *, may_cancel: bool = True) -> None:
        """Throttled write; progress calls double as cancellation points."""
        if time.monotonic() - self._last_flush >= FLUSH_INTERVAL:
            self.flush()
        if may_cancel and self._cancel_seen:
            raise JobCancelled()

    def flush(self) -> None:
        """Write progress, metrics and log; learn about a cancel request on the way."""
        self._last_flush = time.monotonic()
        if self._dirty:
            Job.objects.filter(pk=self.job_id).update(
                progress=self.progress_value,
                total=self.total,
                progress_note=self.note,
                metrics=self.metrics,
                log_tail="\n".join(self._log_lines),
                heartbeat_at=timezone.now(),
            )
            self._dirty = False
        status = Job.objects.filter(pk=self.job_id).values_list("status", flat=True).first()
        self._cancel_seen = status in (Job.Status.CANCELLING, Job.Status.CANCELLED, None)


# --- starting, cancelling, resuming (web side) ------------------------------------------
def start_job(kind: str, params: dict | None = None, *, user=None, title: str = "") -> Job:
    """Create the row and enqueue the task once the surrounding transaction commits."""
    spec = get_kind(kind)
    job = Job.objects.create(
        kind=kind,
        title=title or spec.label.capitalize(),
        params=params or {},
        queue=spec.queue,
        created_by=user if user is not None and user.is_authenticated else None,
    )
    _enqueue(job)
    return job


def _enqueue(job: Job) -> None:
    from ..tasks import run_job_task

    job_id, queue = job.pk, job.queue
    transaction.on_commit(lambda: run_job_task.apply_async((job_id,), queue=queue))


def cancel_job(job: Job) -> Job:
    """Queued jobs are cancelled at once; running ones are asked to stop at the next check."""
    Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
        status=Job.Status.CANCELLED, finished_at=timezone.now()
    )
    Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(status=Job.Status.CANCELLING)
    job.refresh_from_db()
    return job


def resume_job(job: Job) -> Job:
    """Re-queue a failed or cancelled job; handlers are idempotent, so it continues."""
    updated = Job.objects.filter(pk=job.pk, status__in=[Job.Status.FAILED, Job.Status.CANCELLED])
    if updated.update(status=Job.Status.QUEUED, error="", finished_at=None):
        job.refresh_from_db()
        _enqueue(job)
    else:
        job.refresh_from_db()
    return job


def reap_stale_jobs() -> int:
    """Mark running jobs whose worker stopped beating as failed. Returns how many."""
    limit = timezone.now() - timedelta(seconds=settings.VIVA_JOB_HEARTBEAT_TIMEOUT)
    stale = Job.objects.filter(
        status__in=[Job.Status.RUNNING, Job.Status.CANCELLING], heartbeat_at__lt=limit
    )
    count = 0
    for job in stale.only("pk", "heartbeat_at", "worker"):
        seen = timezone.localtime(job.heartbeat_at).strftime("%Y-%m-%d %H:%M:%S")
        count += Job.objects.filter(pk=job.pk, heartbeat_at=job.heartbeat_at).update(
            status=Job.Status.FAILED,
            finished_at=timezone.now(),
            error=(
                f"The worker running this job ({job.worker or 'unknown'}) stopped responding; "
                f"its last sign of life was at {seen}. Press “Resume” to continue where it "
                "stopped."
            ),
        )
    return count


# --- running (worker side) -------------------------------------------------------------
def _claim(job_id: int) -> Job | None:
    """Take the job if it is queued, or if its previous worker is dead (redelivery)."""
    now = timezone.now()
    worker = socket.gethostname()
    limit = now - timedelta(seconds=settings.VIVA_JOB_HEARTBEAT_TIMEOUT)
    fields = {"status": Job.Status.RUNNING, "heartbeat_at": now, "worker": worker}
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(**fields)
    if not claimed:
        claimed = Job.objects.filter(
            pk=job_id, status=Job.Status.RUNNING, heartbeat_at__lt=limit
        ).update(**fields)
    if not claimed:
        Job.objects.filter(pk=job_id, status=Job.Status.CANCELLING).update(
            status=Job.Status.CANCELLED, finished_at=now
        )
        return None
    job = Job.objects.get(pk=job_id)
    if job.started_at is None:
        job.started_at = now
    job.attempts += 1
    job.save(update_fields=["started_at", "attempts"])
    return job


class _Heartbeat(threading.Thread):
    def __init__(self, job_id: int):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.job_id = job_id
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop_event.wait(HEARTBEAT_INTERVAL):
                Job.objects.filter(pk=self.job_id).update(heartbeat_at=timezone.now())
        finally:
            connection.close()


def run_job(job_id: int) -> str:
    """Run one job to completion in this process. Safe to call twice for the same id."""
    if not connection.in_atomic_block:
        # Inside a transaction (eager mode, tests) this would close the caller's connection.
        close_old_connections()
    job = _claim(job_id)
    if job is None:
        return "skipped"
    ctx = JobContext(job)
    beat = _Heartbeat(job_id)
    beat.start()
    try:
        kind = get_kind(job.kind)
        if job.attempts > 1:
            ctx.log(f"Resuming (attempt {job.attempts}).")
        result = kind.handler(ctx) or {}
        ctx.flush()
        final = {"status": Job.Status.SUCCEEDED, "result": result, "error": ""}
        if ctx.total:
            final["progress"] = ctx.total
    except JobCancelled:
        ctx.log("Cancelled by user.")
        ctx.flush()
        final = {"status": Job.Status.CANCELLED}
    except JobError as exc:
        ctx.log(f"Failed: {exc}")
        ctx.flush()
        final = {"status": Job.Status.FAILED, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any crash must end as a visible failure
        ctx.log(traceback.format_exc())
        ctx.flush()
        final = {
            "status": Job.Status.FAILED,
            "error": f"Unexpected error ({type(exc).__name__}: {exc}). The log has details.",
        }
    finally:
        beat.stop_event.set()
        beat.join(timeout=5)
    Job.objects.filter(pk=job_id).update(
        finished_at=timezone.now(), heartbeat_at=timezone.now(), **final
    )
    return str(final["status"])
