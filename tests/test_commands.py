"""Management commands of the core: make_demo, import_videos/import_images, runall."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from viva import demo
from viva.ingest.synth import make_synthetic_video
from viva.models import Collection, Image, Job, Video


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=out)
    return out.getvalue()


@pytest.fixture
def small_demo(monkeypatch, settings, tmp_path):
    """One short video and two stills, so the demo test takes seconds."""
    settings.VAR_DIR = tmp_path
    monkeypatch.setattr(
        demo,
        "DEMO_VIDEOS",
        (demo.DemoVideo("tiny_1975", "Tiny Film", 1975, "1975-01-02", 3, 0, 5, 0.0, 0, "test"),),
    )
    monkeypatch.setattr(demo, "DEMO_STILL_NAMES", ("camera", "coffee"))


@pytest.mark.django_db
def test_make_demo_builds_once_and_prints_the_password_once(small_demo):
    first = run("make_demo", "--no-worker-job")
    assert "user admin" in first and "password" in first
    video = Video.objects.get()
    assert (video.title, video.year) == ("Tiny Film", 1975)
    assert video.shots.count() == 3 and video.keyframes.exists()
    assert Image.objects.filter(video__isnull=True).count() == 2
    assert set(Collection.objects.values_list("name", flat=True)) == {"Demo archive", "Stills"}
    assert get_user_model().objects.get(username="admin").is_superuser
    jobs = Job.objects.count()
    assert jobs == 2 and not Job.objects.exclude(status=Job.Status.SUCCEEDED).exists()

    second = run("make_demo")
    assert "shown ONCE" not in second and "exists already" in second
    assert Video.objects.count() == 1 and Image.objects.count() == first_count(video)
    assert Job.objects.count() == jobs  # nothing to do: no new job either
    assert "not built" in run("make_demo", "--if-empty", "--no-user")


def first_count(video) -> int:
    return video.keyframes.count() + 2


@pytest.mark.django_db
def test_import_videos_sync_reports_errors_and_exit_code(tmp_path):
    good = tmp_path / "clip_1999.mp4"
    make_synthetic_video(good, n_scenes=2, seed=3)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 50)

    with pytest.raises(CommandError):
        run("import_videos", str(bad), "--sync")
    out = run("import_videos", str(tmp_path), "--sync", "--collection", "News")
    assert "1 imported" in out and "1 failed" in out and "broken.mp4" in out
    video = Video.objects.get()
    assert video.collection.name == "News" and video.year == 1999
    assert "0 imported, 1 already" in run("import_videos", str(good), "--sync")
    with pytest.raises(CommandError, match="No such file"):
        run("import_videos", str(tmp_path / "missing.mp4"))


@pytest.mark.django_db
def test_import_images_queues_a_job_by_default(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    PILImage.new("RGB", (32, 24), "red").save(tmp_path / "red.png")
    sent = []
    monkeypatch.setattr("viva.jobs.runner._enqueue", lambda job: sent.append(job.pk))
    out = run("import_images", str(tmp_path), "--collection", "Pictures")
    job = Job.objects.get()
    assert sent == [job.pk] and job.kind == "import_images" and job.status == Job.Status.QUEUED
    assert f"/jobs/{job.pk}/" in out
    assert job.params["paths"] == [str(tmp_path.resolve())]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.worker
def test_runall_serves_and_stops_both_on_ctrl_c(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="viva.settings", VIVA_VAR_DIR=str(tmp_path), PYTHONUNBUFFERED="1"
    )
    manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, timeout=120)
    port = _free_port()
    log = tmp_path / "runall.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*manage, "runall", "--addr", f"127.0.0.1:{port}", "--concurrency", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while not ("VIVA is running at" in log.read_text() and "ready." in log.read_text()):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "runall did not come up:\n" + log.read_text()
            time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/") as response:
            assert response.status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    left = subprocess.run(
        ["pgrep", "-f", f"127.0.0.1:{port}|viva-{proc.pid}@"], capture_output=True, text=True
    ).stdout
    assert not left.strip(), f"processes left behind: {left}"
