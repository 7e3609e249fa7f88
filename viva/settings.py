"""Settings for VIVA.

Everything comes from environment variables whose defaults are the *embedded* stack
(DESIGN.md section 3): SQLite in ``var/``, a Celery broker on the filesystem, media in
``var/media``. Pointing ``DATABASE_URL`` at PostgreSQL and ``CELERY_BROKER_URL`` at Redis
switches to the scale-out stack without code changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

# FAISS (OpenMP) threads must sleep between searches instead of spinning: spinning threads
# took a core from everything else in the web process and the worker (measured: a 2 ms
# search became 190 ms right after another one; docs/similarity-search.md). Set before
# anything imports faiss.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


VAR_DIR = Path(env("VIVA_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("VIVA_DEBUG", False)
SECRET_KEY = env("VIVA_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and env_bool("VIVA_PRODUCTION", False):
        raise ImproperlyConfigured("Set VIVA_SECRET_KEY in production.")
    # A per-installation key kept in var/, never committed: sessions survive restarts.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        from django.core.management.utils import get_random_secret_key

        key_file.write_text(get_random_secret_key())
        key_file.chmod(0o600)
    SECRET_KEY = key_file.read_text().strip()

ALLOWED_HOSTS = env_list("VIVA_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("VIVA_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "viva",
    "annotation",
    "training",
    "retrieval",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "viva.urls"
WSGI_APPLICATION = "viva.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.media",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "viva.context.navigation",
            ],
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'viva.sqlite3'}"), conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while the worker writes; the timeout rides out
    # short write locks instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A file, not memory, so a real Celery worker process can share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # JIT compilation costs ~80 ms on the grid's short index queries (docs/grid-performance.md).
    DATABASES["default"]["OPTIONS"] = {"options": "-c jit=off"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_AGE = int(env("VIVA_SESSION_SECONDS", str(8 * 3600)))

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("VIVA_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("VIVA_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env("VIVA_MEDIA_ROOT", str(VAR_DIR / "media")))
VIVA_MODELS_DIR = Path(env("VIVA_MODELS_DIR", str(VAR_DIR / "models")))
VIVA_WEIGHTS_DIR = Path(env("VIVA_WEIGHTS_DIR", str(VAR_DIR / "weights")))
VIVA_SERVE_MEDIA = env_bool("VIVA_SERVE_MEDIA", True)

# Uploads: large videos stream to disk; the per-file limit is checked in the form.
VIVA_MAX_UPLOAD_MB = int(env("VIVA_MAX_UPLOAD_MB", "2048"))
DATA_UPLOAD_MAX_NUMBER_FIELDS = 20000
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 2**20
FILE_UPLOAD_TEMP_DIR = str(VAR_DIR / "tmp")
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)

# Shots and keyframes (DESIGN.md section 5).
VIVA_KEYFRAMES_PER_SHOT = int(env("VIVA_KEYFRAMES_PER_SHOT", "5"))
VIVA_THUMB_SIZE = int(env("VIVA_THUMB_SIZE", "256"))

# Jobs: a running job whose heartbeat is older than this is considered dead.
VIVA_JOB_HEARTBEAT_TIMEOUT = int(env("VIVA_JOB_HEARTBEAT_TIMEOUT", "120"))

# Similarity search (issue 6): the query-by-example entry point the annotation app calls
# (dotted path), the index backend behind it, and where the FAISS index files live.
VIVA_SIMILARITY_BACKEND = env("VIVA_SIMILARITY_BACKEND", "retrieval.search.service") or None
VIVA_SEARCH_BACKEND = env("VIVA_SEARCH_BACKEND", "faiss")  # faiss | elasticsearch
VIVA_INDEX_DIR = Path(env("VIVA_INDEX_DIR", str(VAR_DIR / "index")))
# Elasticsearch / OpenSearch (ElasticHash): cluster URL, index and alias names.
VIVA_ES_URL = env("VIVA_ES_URL", "http://127.0.0.1:9200")
VIVA_ES_INDEX = env("VIVA_ES_INDEX", "viva-codes")
VIVA_ES_ALIAS = env("VIVA_ES_ALIAS", "viva-codes-current")
VIVA_ES_NEIGHBOURS_INDEX = env("VIVA_ES_NEIGHBOURS_INDEX", "nbs-d2")
VIVA_ES_TIMEOUT = float(env("VIVA_ES_TIMEOUT", "10"))
# Re-rank on the cluster (stored painless script) or in VIVA (servers without scripts).
VIVA_ES_RERANK = env("VIVA_ES_RERANK", "server")  # server | client (docs/elastichash.md)
# Backbone features for the unsupervised (ITQ) hash codes may start from random weights
# only when asked (tests, demo): such codes are close to meaningless.
VIVA_HASHING_ALLOW_RANDOM = env_bool("VIVA_HASHING_ALLOW_RANDOM", False)
# Backbone of the hash-code models ("" = efficientnet-b3; tests and demos use a tiny one).
VIVA_HASHING_NETWORK = env("VIVA_HASHING_NETWORK", "")

# Persons (issue 7): face quality filters, embedding weights, recognition settings.
VIVA_FACE_MIN_SCORE = float(env("VIVA_FACE_MIN_SCORE", "0.90"))  # MTCNN probability
VIVA_FACE_MIN_SIZE = int(env("VIVA_FACE_MIN_SIZE", "40"))  # shorter box side, pixels
VIVA_FACE_MIN_SHARPNESS = float(env("VIVA_FACE_MIN_SHARPNESS", "15"))  # Laplacian variance
VIVA_FACE_MAX_ASPECT = float(env("VIVA_FACE_MAX_ASPECT", "2.0"))  # long / short box side
VIVA_FACE_ALLOW_RANDOM_WEIGHTS = env_bool("VIVA_FACE_ALLOW_RANDOM_WEIGHTS", False)
VIVA_PERSON_MIN_FACES = int(env("VIVA_PERSON_MIN_FACES", "10"))  # to be trained
VIVA_PERSON_MAX_FACES = int(env("VIVA_PERSON_MAX_FACES", "100"))  # balanced subsample
VIVA_PERSON_MAX_CLUSTERS = int(env("VIVA_PERSON_MAX_CLUSTERS", "100"))
# Agglomerative clustering of a person's faces (cosine distance threshold; caps).
VIVA_PERSON_CLUSTER_DISTANCE = float(env("VIVA_PERSON_CLUSTER_DISTANCE", "0.4"))
VIVA_PERSON_CLUSTER_MAX_FACES = int(env("VIVA_PERSON_CLUSTER_MAX_FACES", "5000"))
VIVA_PERSON_CLUSTER_INLINE_FACES = int(env("VIVA_PERSON_CLUSTER_INLINE_FACES", "1500"))
# The face index is exact (IndexFlatIP) up to this many faces, approximate above.
VIVA_FACE_INDEX_EXACT_MAX = int(env("VIVA_FACE_INDEX_EXACT_MAX", "100000"))

# Inference: sigmoid scores below this floor are not stored (docs/prediction-storage.md).
VIVA_PREDICTION_FLOOR = float(env("VIVA_PREDICTION_FLOOR", "0.05"))

# Safe fetching: hosts allowed although private (tests only).
VIVA_FETCH_ALLOW_HOSTS = env_list("VIVA_FETCH_ALLOW_HOSTS")

# --- Celery -----------------------------------------------------------------------
BROKER_DIR = Path(env("VIVA_BROKER_DIR", str(VAR_DIR / "broker")))
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "control_folder": str(BROKER_DIR / "control"),  # default: ./control in the cwd
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True  # state lives in Job rows, not in a result backend
CELERY_TASK_ACKS_LATE = True  # tasks are idempotent; a crashed worker's task is redelivered
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- REST API ------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["viva.roles.HasRole"],
    "DEFAULT_PAGINATION_CLASS": "viva.pagination.ApiPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "VIVA API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI files come from the sidecar package: no CDN (archives are often offline).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Production hardening (manage.py check --deploy) ------------------------------------
if env_bool("VIVA_PRODUCTION", False):
    SECURE_SSL_REDIRECT = env_bool("VIVA_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(env("VIVA_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("VIVA_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Concept training (training/; DESIGN.md sections 5 and 6) -----------------------------
# A concept needs this many positive labels to be trained (the thesis suggests 100).
VIVA_TRAIN_MIN_POSITIVES = int(env("VIVA_TRAIN_MIN_POSITIVES", "100"))
# DataLoader worker processes that decode and augment images beside the training loop.
VIVA_TRAIN_NUM_WORKERS = int(env("VIVA_TRAIN_NUM_WORKERS", "2"))
# Devices offered for training when the GPU workers are other machines (e.g.
# "cuda:0,cuda:1,cpu"); empty: the devices of the machine that serves the page.
VIVA_TRAIN_DEVICES = env_list("VIVA_TRAIN_DEVICES")
# Download ImageNet weights when neither VIVA_WEIGHTS_DIR nor the torch hub cache has
# them. Offline the download fails with a message saying where to put the file.
VIVA_ALLOW_WEIGHT_DOWNLOAD = env_bool("VIVA_ALLOW_WEIGHT_DOWNLOAD", True)
