"""The job mechanism without a worker: runner rules, progress/ETA, the jobs pages and controls.

Handlers are registered here under ``test_*`` kinds and run in-process with ``run_job``; the
real worker is exercised in ``test_worker.py``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from unittest import mock

import pytest
from django.urls import reverse
from django.utils import timezone

from viva.jobs import (
    JobError,
    cancel_job,
    job_handler,
    reap_stale_jobs,
    resume_job,
    run_job,
    runner,
)
from viva.models import Job

# --- handlers used by these tests ---
CALLS: dict[str, int] = {}


@job_handler("test_ok")
def _ok(ctx):
    CALLS["test_ok"] = CALLS.get("test_ok", 0) + 1
    ctx.set_total(4, note="starting")
    for step in range(1, 5):
        ctx.metric("loss", step, 1.0 / step)
        ctx.progress(step, note=f"step {step}")
    ctx.log("all done")
    return {"answer": 42}


@job_handler("test_user_error")
def _user_error(ctx):
    ctx.progress(1, total=3)
    raise JobError("The collection is empty.")


@job_handler("test_crash")
def _crash(ctx):
    ctx.log("about to divide")
    return {"x": 1 / 0}


@job_handler("test_cancel_midway")
def _cancel_midway(ctx):
    """Asks for its own cancellation (as the web process would) and counts on."""
    ctx.set_total(100)
    for step in range(1, 101):
        if step == 5:
            cancel_job(Job.objects.get(pk=ctx.job_id))
        ctx.progress(step)
        CALLS["cancel_last_step"] = step
    return {"finished": True}


@job_handler("test_cancel_slow")
def _cancel_slow(ctx):
    """Like ``test_cancel_midway`` but with real work between progress calls."""
    import time

    ctx.set_total(200)
    for step in range(1, 201):
        if step == 5:
            cancel_job(Job.objects.get(pk=ctx.job_id))
        time.sleep(0.02)
        ctx.progress(step)
        CALLS["cancel_last_step"] = step
    return {"finished": True}


@job_handler("test_silent")
def _silent(ctx):
    """A long step without progress calls: only the heartbeat thread shows it is alive."""
    import time

    before = Job.objects.get(pk=ctx.job_id).heartbeat_at
    time.sleep(0.5)
    after = Job.objects.get(pk=ctx.job_id).heartbeat_at
    return {"before": before.isoformat(), "after": after.isoformat()}


def make_job(kind="test_ok", **fields) -> Job:
    return Job.objects.create(kind=kind, title=fields.pop("title", kind), **fields)


@pytest.fixture(autouse=True)
def _no_enqueue():
    """No broker in these tests: record what would have been sent to Celery."""
    with mock.patch("viva.tasks.run_job_task.apply_async") as sent:
        yield sent


# --- JobContext ---
def test_context_persists_progress_metrics_and_log(db):
    job = make_job(status=Job.Status.RUNNING)
    ctx = runner.JobContext(job)
    ctx.set_total(10, note="warming up")
    ctx.progress(3, note="three")
    ctx.metric("loss", 1, 0.9)
    ctx.metric("loss", 2, 0.7)
    ctx.metric("map", 1, 0.5)
    ctx.log("first line\nsecond line")
    ctx.flush()
    job.refresh_from_db()
    assert (job.progress, job.total, job.progress_note) == (3, 10, "three")
    assert job.metrics == {"loss": [[1, 0.9], [2, 0.7]], "map": [[1, 0.5]]}
    lines = job.log_tail.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["first line", "second line"]
    assert job.heartbeat_at is not None


def test_context_throttles_writes_but_flush_is_exact(db, monkeypatch):
    monkeypatch.setattr(runner, "FLUSH_INTERVAL", 60.0)  # no time-based flush in this test
    job = make_job(status=Job.Status.RUNNING)
    ctx = runner.JobContext(job)
    ctx.progress(1, total=100)  # the first call writes
    for i in range(2, 50):
        ctx.progress(i)  # throttled: within FLUSH_INTERVAL
    job.refresh_from_db()
    assert job.progress == 1
    ctx.flush()
    job.refresh_from_db()
    assert job.progress == 49


def test_log_keeps_only_the_tail(db):
    job = make_job(status=Job.Status.RUNNING)
    ctx = runner.JobContext(job)
    for i in range(runner.LOG_TAIL_LINES + 50):
        ctx.log(f"line {i}")
    ctx.flush()
    job.refresh_from_db()
    lines = job.log_tail.splitlines()
    assert len(lines) == runner.LOG_TAIL_LINES
    assert lines[-1].endswith(f"line {runner.LOG_TAIL_LINES + 49}")


# --- run_job ---
def test_run_job_succeeds_with_result(db):
    CALLS.clear()
    job = make_job()
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.result == {"answer": 42}
    assert (job.progress, job.total) == (4, 4)
    assert job.metrics["loss"] == [[1, 1.0], [2, 0.5], [3, 1 / 3], [4, 0.25]]
    assert "all done" in job.log_tail
    assert job.started_at and job.finished_at and job.finished_at >= job.started_at
    assert job.attempts == 1 and job.worker
    assert job.error == ""


def test_running_twice_is_a_no_op(db):
    CALLS.clear()
    job = make_job()
    assert run_job(job.pk) == "succeeded"
    finished = Job.objects.get(pk=job.pk).finished_at
    assert run_job(job.pk) == "skipped"
    job.refresh_from_db()
    assert CALLS["test_ok"] == 1
    assert job.attempts == 1 and job.finished_at == finished


def test_a_live_running_job_is_not_taken_twice(db):
    CALLS.clear()
    job = make_job(status=Job.Status.RUNNING, heartbeat_at=timezone.now())
    assert run_job(job.pk) == "skipped"
    assert "test_ok" not in CALLS
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING


def test_a_redelivered_job_of_a_dead_worker_is_taken_over(db):
    old = timezone.now() - timedelta(hours=1)
    job = make_job(status=Job.Status.RUNNING, heartbeat_at=old, started_at=old, attempts=1)
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.attempts == 2 and job.started_at == old
    assert "Resuming (attempt 2)" in job.log_tail


def test_run_job_of_a_missing_job_is_skipped(db):
    assert run_job(987654321) == "skipped"


def test_cancel_queued_job_then_run_skips_it(db):
    CALLS.clear()
    job = make_job()
    job = cancel_job(job)
    assert job.status == Job.Status.CANCELLED and job.finished_at
    assert run_job(job.pk) == "skipped"
    assert "test_ok" not in CALLS
    assert Job.objects.get(pk=job.pk).status == Job.Status.CANCELLED


def test_cancel_running_job_stops_at_next_progress_call(db, monkeypatch):
    monkeypatch.setattr(runner, "FLUSH_INTERVAL", 0.0)  # every progress call is a check
    job = make_job("test_cancel_midway")
    assert run_job(job.pk) == "cancelled"
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert CALLS["cancel_last_step"] == 4  # step 5's progress call raised
    assert "Cancelled by user." in job.log_tail
    assert job.finished_at and job.result == {}


def test_cancel_running_job_is_noticed_within_the_flush_interval(db):
    """Unpatched, writes are throttled: the cancel is seen at the first flush after it."""
    job = make_job("test_cancel_slow")
    assert run_job(job.pk) == "cancelled"
    # 20 ms per step: FLUSH_INTERVAL (0.5 s) is at most 25 steps, plus slack for slow machines.
    assert 5 <= CALLS["cancel_last_step"] <= 5 + 25 + 15
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.progress < 200


def test_cancelling_job_redelivered_becomes_cancelled(db):
    job = make_job(status=Job.Status.CANCELLING, heartbeat_at=timezone.now())
    assert run_job(job.pk) == "skipped"
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.finished_at


def test_job_error_fails_with_its_message(db):
    job = make_job("test_user_error")
    assert run_job(job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "The collection is empty."
    assert "Failed: The collection is empty." in job.log_tail
    assert "Traceback" not in job.log_tail  # a user-facing failure, not a crash


def test_unexpected_exception_fails_readably_with_traceback_in_log(db):
    job = make_job("test_crash")
    assert run_job(job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "ZeroDivisionError" in job.error and "division by zero" in job.error
    assert "log" in job.error  # points the user to the details
    assert "Traceback (most recent call last)" in job.log_tail
    assert "_crash" in job.log_tail  # the frame that raised
    assert "about to divide" in job.log_tail


def test_unknown_kind_fails(db):
    job = make_job("no_such_kind")
    assert run_job(job.pk) == "failed"
    assert "Unknown job kind" in Job.objects.get(pk=job.pk).error


def test_heartbeat_thread_beats_during_a_silent_step(transactional_db, monkeypatch):
    # transactional_db: the heartbeat thread writes through its own connection.
    monkeypatch.setattr(runner, "HEARTBEAT_INTERVAL", 0.05)
    job = make_job("test_silent")
    assert run_job(job.pk) == "succeeded"
    result = Job.objects.get(pk=job.pk).result
    assert result["after"] > result["before"]


# --- reaping and resuming ---
def test_reap_marks_a_job_with_an_old_heartbeat_failed(db, settings):
    settings.VIVA_JOB_HEARTBEAT_TIMEOUT = 60
    dead = make_job(
        status=Job.Status.RUNNING,
        worker="gpu-box-7",
        heartbeat_at=timezone.now() - timedelta(minutes=5),
    )
    alive = make_job(status=Job.Status.RUNNING, heartbeat_at=timezone.now())
    queued = make_job()
    assert reap_stale_jobs() == 1
    dead.refresh_from_db()
    assert dead.status == Job.Status.FAILED and dead.finished_at
    assert "stopped responding" in dead.error and "gpu-box-7" in dead.error
    assert "Resume" in dead.error
    assert Job.objects.get(pk=alive.pk).status == Job.Status.RUNNING
    assert Job.objects.get(pk=queued.pk).status == Job.Status.QUEUED
    assert reap_stale_jobs() == 0


def test_resume_requeues_failed_job_on_commit(db, _no_enqueue, django_capture_on_commit_callbacks):
    job = make_job(status=Job.Status.FAILED, error="boom", finished_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        job = resume_job(job)
    assert job.status == Job.Status.QUEUED and job.error == "" and job.finished_at is None
    assert len(callbacks) == 1
    _no_enqueue.assert_called_once_with((job.pk,), queue=job.queue)


@pytest.mark.parametrize("status", [Job.Status.SUCCEEDED, Job.Status.RUNNING, Job.Status.QUEUED])
def test_resume_of_other_states_does_nothing(db, django_capture_on_commit_callbacks, status):
    job = make_job(status=status, heartbeat_at=timezone.now())
    with django_capture_on_commit_callbacks() as callbacks:
        job = resume_job(job)
    assert job.status == status and callbacks == []


def test_resumed_job_runs_again(db):
    job = make_job(status=Job.Status.FAILED, error="worker died", attempts=1)
    resume_job(job)
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.attempts == 2 and job.result == {"answer": 42}


def test_start_job_enqueues_on_commit_with_id_and_queue(
    db, _no_enqueue, users, django_capture_on_commit_callbacks
):
    from viva.jobs import start_job

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = start_job("import_images", {"collection_id": 1}, user=users["trainer"])
    _no_enqueue.assert_not_called()  # nothing is sent before the row is committed
    for callback in callbacks:
        callback()
    _no_enqueue.assert_called_once_with((job.pk,), queue="io")
    assert job.created_by == users["trainer"] and job.status == Job.Status.QUEUED
    assert job.title == "Image import"


def test_start_job_of_unknown_kind_raises(db):
    from viva.jobs import start_job

    with pytest.raises(JobError):
        start_job("no_such_kind")
    assert not Job.objects.exists()


# --- percent and ETA ---
def test_percent():
    assert Job(total=0, progress=5).percent is None
    assert Job(total=200, progress=50).percent == 25.0
    assert Job(total=10, progress=12).percent == 100.0


def test_eta():
    now = timezone.now()
    running = Job(
        status=Job.Status.RUNNING, started_at=now - timedelta(seconds=10), progress=25, total=100
    )
    assert running.eta_seconds == pytest.approx(30, abs=1)
    assert Job(status=Job.Status.RUNNING, started_at=now, progress=0, total=100).eta_seconds is None
    assert Job(status=Job.Status.RUNNING, started_at=now, progress=5, total=0).eta_seconds is None
    assert (
        Job(status=Job.Status.SUCCEEDED, started_at=now, progress=5, total=10).eta_seconds is None
    )
    assert Job(status=Job.Status.QUEUED, progress=5, total=10).eta_seconds is None


def test_duration():
    now = timezone.now()
    assert Job().duration is None
    done = Job(started_at=now - timedelta(seconds=90), finished_at=now)
    assert done.duration == timedelta(seconds=90)


# --- pages and JSON endpoints ---
@pytest.fixture
def jobs(users):
    old = timezone.now() - timedelta(seconds=20)
    return {
        "running": make_job(
            title="Import archive",
            status=Job.Status.RUNNING,
            progress=40,
            total=100,
            progress_note="video 4 of 10",
            started_at=old,
            heartbeat_at=timezone.now(),
            metrics={"loss": [[1, 0.5], [2, 0.25]]},
            log_tail="12:00:00 hello",
            created_by=users["annotator"],
        ),
        "failed": make_job(
            title="Train concepts",
            status=Job.Status.FAILED,
            error="Out of memory on cuda:0.",
            created_by=users["trainer"],
            finished_at=timezone.now(),
        ),
    }


def test_jobs_page_lists_jobs_with_progress(client_for, jobs):
    response = client_for("researcher").get(reverse("jobs:list"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Import archive" in html and "Train concepts" in html
    assert f'data-job-id="{jobs["running"].pk}"' in html
    assert reverse("jobs:status_list") in html  # the table polls this


def test_jobs_page_reaps_dead_jobs(client_for, jobs, settings):
    settings.VIVA_JOB_HEARTBEAT_TIMEOUT = 5
    Job.objects.filter(pk=jobs["running"].pk).update(
        heartbeat_at=timezone.now() - timedelta(minutes=1)
    )
    assert client_for("researcher").get(reverse("jobs:list")).status_code == 200
    assert Job.objects.get(pk=jobs["running"].pk).status == Job.Status.FAILED


def test_status_list_json(client_for, jobs):
    ids = f"{jobs['running'].pk},{jobs['failed'].pk},x,999999"
    response = client_for("researcher").get(reverse("jobs:status_list"), {"ids": ids})
    assert response.status_code == 200
    states = {j["id"]: j for j in response.json()["jobs"]}
    assert set(states) == {jobs["running"].pk, jobs["failed"].pk}
    running = states[jobs["running"].pk]
    assert running["status"] == "running" and running["percent"] == 40.0
    assert running["note"] == "video 4 of 10" and running["active"] is True
    assert running["eta_seconds"] == pytest.approx(30, abs=3)
    assert running["created_by"] == "annotator"
    assert states[jobs["failed"].pk]["error"] == "Out of memory on cuda:0."


def test_job_status_json_has_log_metrics_and_error(client_for, jobs):
    client = client_for("researcher")
    state = client.get(reverse("jobs:status", args=[jobs["running"].pk])).json()
    assert state["progress"] == 40 and state["total"] == 100
    assert state["metrics"] == {"loss": [[1, 0.5], [2, 0.25]]}
    assert state["log"] == "12:00:00 hello"
    failed = client.get(reverse("jobs:status", args=[jobs["failed"].pk])).json()
    assert failed["status"] == "failed" and failed["error"] == "Out of memory on cuda:0."
    assert failed["active"] is False
    assert client.get(reverse("jobs:status", args=[999999])).status_code == 404


def test_job_detail_page(client_for, jobs):
    response = client_for("annotator").get(reverse("jobs:detail", args=[jobs["running"].pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Import archive" in html and "hello" in html and "video 4 of 10" in html
    assert response.context["can_control"] is True  # the annotator's own job
    response = client_for("annotator").get(reverse("jobs:detail", args=[jobs["failed"].pk]))
    assert response.context["can_control"] is False
    assert "Out of memory on cuda:0." in response.content.decode()


def test_annotator_cancels_own_running_job(client_for, jobs):
    url = reverse("jobs:cancel", args=[jobs["running"].pk])
    response = client_for("annotator").post(url, HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelling"
    assert Job.objects.get(pk=jobs["running"].pk).status == Job.Status.CANCELLING


def test_cancel_without_json_redirects_to_the_job(client_for, jobs):
    url = reverse("jobs:cancel", args=[jobs["running"].pk])
    response = client_for("trainer").post(url)
    assert response.status_code == 302
    assert response["Location"] == reverse("jobs:detail", args=[jobs["running"].pk])


def test_annotator_may_not_control_others_jobs(client_for, jobs):
    client = client_for("annotator")
    for action in ("cancel", "resume"):
        response = client.post(reverse(f"jobs:{action}", args=[jobs["failed"].pk]))
        assert response.status_code == 403
        assert "own jobs" in json.loads(response.content)["error"]
    assert Job.objects.get(pk=jobs["failed"].pk).status == Job.Status.FAILED


def test_researcher_may_not_control_jobs_at_all(client_for, users):
    job = make_job(status=Job.Status.RUNNING, created_by=users["researcher"])
    response = client_for("researcher").post(reverse("jobs:cancel", args=[job.pk]))
    assert response.status_code == 403
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING


def test_trainer_resumes_any_failed_job(
    client_for, jobs, _no_enqueue, django_capture_on_commit_callbacks
):
    url = reverse("jobs:resume", args=[jobs["failed"].pk])
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for("trainer").post(url, HTTP_ACCEPT="application/json")
    assert response.status_code == 200 and response.json()["status"] == "queued"
    _no_enqueue.assert_called_once()


def test_cancel_and_resume_need_post(client_for, jobs):
    client = client_for("admin")
    for action in ("cancel", "resume"):
        assert client.get(reverse(f"jobs:{action}", args=[jobs["running"].pk])).status_code == 405


def test_anonymous_is_sent_to_login(client, jobs):
    for url in (reverse("jobs:list"), reverse("jobs:status", args=[jobs["running"].pk])):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    response = client.post(reverse("jobs:cancel", args=[jobs["running"].pk]))
    assert response.status_code == 302
    assert Job.objects.get(pk=jobs["running"].pk).status == Job.Status.RUNNING


def test_worker_check_button_starts_a_job(
    client_for, _no_enqueue, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for("trainer").post(reverse("jobs:worker_check"))
    job = Job.objects.get(kind="worker_check")
    assert response.status_code == 302
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    _no_enqueue.assert_called_once_with((job.pk,), queue="default")
    assert client_for("annotator").post(reverse("jobs:worker_check")).status_code == 403
