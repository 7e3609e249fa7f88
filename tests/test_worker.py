"""Jobs through a real Celery worker process on the embedded broker (not eager mode).

Each test starts its own worker (``celery_worker`` in conftest.py) on the file-based test
database; the test's rows must be committed, hence ``transactional_db``. Failures print the
worker's output so a broken worker is diagnosable from the test report alone.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import WorkerProcess
from viva.jobs import cancel_job, reap_stale_jobs, resume_job, start_job
from viva.media import media_path
from viva.models import Collection, Image, Job, Shot, Video

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def done_with(worker) -> None:
    """Stop a worker whose jobs are all finished at once: a warm shutdown on the filesystem
    transport takes 5-7 s, which would dominate these tests."""
    worker.kill()


def job_of(job_id: int) -> Job:
    return Job.objects.get(pk=job_id)


def wait_job(worker, job_id: int, predicate, timeout: float, what: str) -> Job:
    """Poll the job row until ``predicate(job)``; fail with the job and the worker log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_of(job_id)
        if predicate(job):
            return job
        time.sleep(0.1)
    job = job_of(job_id)
    pytest.fail(
        f"Job {job_id} not {what} within {timeout} s: status={job.status} "
        f"progress={job.progress}/{job.total} error={job.error!r}\n"
        f"--- job log ---\n{job.log_tail}\n--- worker output ---\n{worker.output()}"
    )


def test_worker_runs_job_with_live_progress_and_metrics(celery_worker):
    job = start_job("worker_check", {"steps": 30, "delay": 0.1})
    seen: set[int] = set()

    def finished(j: Job) -> bool:
        seen.add(j.progress)
        return j.status in Job.FINISHED

    job = wait_job(celery_worker, job.pk, finished, 30, "finished")
    assert job.status == Job.Status.SUCCEEDED, celery_worker.output()
    assert (job.progress, job.total) == (30, 30)
    # Progress arrived while the job ran, not only at the end (writes are throttled to 0.5 s).
    assert len({p for p in seen if 0 < p < 30}) >= 2, sorted(seen)
    series = job.metrics["steps per second"]
    assert [step for step, _ in series] == list(range(1, 31))
    assert job.result == {"summary": "The worker ran 30 steps."}
    assert "Worker check finished 30 steps." in job.log_tail
    assert job.worker and job.started_at and job.finished_at and job.attempts == 1
    done_with(celery_worker)


def test_cancel_running_job_through_worker(celery_worker):
    job = start_job("worker_check", {"steps": 200, "delay": 0.1})
    wait_job(celery_worker, job.pk, lambda j: j.progress >= 3, 30, "running")
    cancel_job(job_of(job.pk))
    job = wait_job(celery_worker, job.pk, lambda j: j.status in Job.FINISHED, 5, "cancelled")
    assert job.status == Job.Status.CANCELLED, celery_worker.output()
    assert job.progress < 200
    assert "Cancelled by user." in job.log_tail
    done_with(celery_worker)


def test_dead_worker_job_is_failed_then_resumed(celery_worker, settings):
    job = start_job("worker_check", {"steps": 30, "delay": 0.1})
    wait_job(celery_worker, job.pk, lambda j: j.progress >= 5, 30, "running")
    celery_worker.kill()  # SIGKILL: no chance to write anything
    progress_at_kill = job_of(job.pk).progress
    assert job_of(job.pk).status == Job.Status.RUNNING

    # The web process sees no heartbeat (flushes every 0.5 s, the thread every 10 s) for longer
    # than the timeout; a short timeout keeps the test fast.
    settings.VIVA_JOB_HEARTBEAT_TIMEOUT = 1
    deadline = time.monotonic() + 15
    while not reap_stale_jobs():
        assert time.monotonic() < deadline, "the dead worker's job was never reaped"
        time.sleep(0.2)
    job = job_of(job.pk)
    assert job.status == Job.Status.FAILED
    assert "stopped responding" in job.error
    assert job.progress == progress_at_kill < 30

    fresh = WorkerProcess(f"resume-{job.pk}-{time.monotonic_ns()}")
    try:
        resume_job(job)
        job = wait_job(fresh, job.pk, lambda j: j.status in Job.FINISHED, 30, "finished")
        assert job.status == Job.Status.SUCCEEDED, fresh.output()
        assert job.progress == 30 and job.attempts == 2 and job.error == ""
        assert "Resuming (attempt 2)." in job.log_tail
    finally:
        done_with(fresh)
        fresh.stop()  # closes the log file


def test_video_import_end_to_end(celery_worker, tmp_path):
    from viva.ingest.synth import make_synthetic_video

    path = tmp_path / "demo_1987.mp4"
    truth = make_synthetic_video(path, n_scenes=3, size=(160, 96), seed=3)
    collection = Collection.objects.create(name="Worker import")
    job = start_job("import_videos", {"collection_id": collection.pk, "paths": [str(path)]})
    job = wait_job(celery_worker, job.pk, lambda j: j.status in Job.FINISHED, 45, "finished")
    assert job.status == Job.Status.SUCCEEDED, f"{job.error}\n{job.log_tail}"
    assert len(job.result["imported"]) == 1 and job.result["errors"] == []

    video = Video.objects.get(collection=collection)
    assert video.year == 1987 and video.n_frames == truth.n_frames
    assert Shot.objects.filter(video=video).count() == len(truth.shots)
    keyframes = list(Image.objects.filter(video=video))
    assert len(keyframes) >= len(truth.shots)
    for image in keyframes:
        assert media_path(image.file).is_file(), image.file
        assert media_path(image.thumbnail).is_file(), image.thumbnail
    assert media_path(video.file).is_file()
    done_with(celery_worker)
