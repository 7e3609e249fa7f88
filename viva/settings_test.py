"""Test settings: an isolated var/ directory, fast hashing, test-only fetch allowances.

Environment defaults are set before the base settings are read, so a Celery worker
started by the tests with the same settings module shares the database, broker and media.
"""

import os
from pathlib import Path

_BASE = Path(__file__).resolve().parent.parent
os.environ.setdefault("VIVA_VAR_DIR", str(_BASE / "var" / "test"))
os.environ.setdefault("VIVA_JOB_HEARTBEAT_TIMEOUT", "120")

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
VIVA_FETCH_ALLOW_HOSTS = ["127.0.0.1"]
VIVA_HASHING_ALLOW_RANDOM = True
VIVA_FACE_ALLOW_RANDOM_WEIGHTS = True
