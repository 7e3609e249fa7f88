"""Shared fixtures: users per role, an isolated media root, a real Celery worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from viva.models import Profile
from viva.models.users import Role

pytest_plugins = ["tests.fixtures_browser"]

ROLES = {
    "researcher": Role.RESEARCHER,
    "annotator": Role.ANNOTATOR,
    "trainer": Role.TRAINER,
    "admin": Role.ADMIN,
}
PASSWORD = "test-pass-1234"


@pytest.fixture(scope="session", autouse=True)
def _clean_var():
    """A fresh media root and broker folder for each test session."""
    for path in (Path(settings.MEDIA_ROOT), Path(settings.BROKER_DIR)):
        shutil.rmtree(path, ignore_errors=True)
    for sub in ("queue", "processed"):
        (Path(settings.BROKER_DIR) / sub).mkdir(parents=True, exist_ok=True)
    Path(settings.MEDIA_ROOT).mkdir(parents=True, exist_ok=True)
    yield


@pytest.fixture(autouse=True)
def _clear_cache():
    """Cached counts and searches must not leak between tests (ids are reused)."""
    from django.core.cache import cache

    cache.clear()
    yield


def make_user(username: str, role: int, **extra):

    user = get_user_model().objects.create_user(username=username, password=PASSWORD, **extra)
    Profile.objects.update_or_create(user=user, defaults={"role": role})
    return user


@pytest.fixture
def users(db) -> dict:
    """One user per role, keyed by role name."""
    return {name: make_user(name, role) for name, role in ROLES.items()}


@pytest.fixture
def client_for(users):
    """``client_for("annotator")`` → a logged-in Django test client."""
    from django.test import Client

    def make(role: str) -> Client:
        client = Client()
        client.force_login(users[role])
        return client

    return make


def _worker_env() -> dict[str, str]:
    from django.db import connection

    env = os.environ.copy()
    env["DJANGO_SETTINGS_MODULE"] = "viva.settings_test"
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or 'localhost'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        )
    env["VIVA_MEDIA_ROOT"] = str(settings.MEDIA_ROOT)
    env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    env["VIVA_BROKER_DIR"] = str(settings.BROKER_DIR)
    return env


class WorkerProcess:
    """A real ``celery worker`` subprocess on the test database and broker."""

    def __init__(self, name: str):
        self.log_path = Path(settings.VAR_DIR) / f"worker-{name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "viva",
                "worker",
                "-Q",
                "default,io,gpu",
                "-c",
                "2",
                "-l",
                "info",
                "-n",
                f"{name}@%h",
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
            ],
            env=_worker_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=settings.BASE_DIR,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "ready." in self.log_path.read_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Celery worker did not start:\n" + self.log_path.read_text())

    def output(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the worker and its pool children."""
        subprocess.run(["pkill", "-9", "-P", str(self.proc.pid)], check=False)
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def celery_worker(transactional_db):
    """A fresh worker for one test (the test's data must be committed: transactional_db)."""
    worker = WorkerProcess(f"w{os.getpid()}-{time.monotonic_ns()}")
    yield worker
    worker.stop()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2):
    """Poll until ``predicate()`` is truthy; return its value or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"Condition not met within {timeout} s")
