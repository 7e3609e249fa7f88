"""Expected access of every URL of the core (``viva``); read by ``tests/test_roles.py``.

Every URL name of the project must have an entry in exactly one ``tests/url_roles_<app>.py``
module; a URL without one fails the role walk. To add your app's URLs, copy this file to
``tests/url_roles_<app>.py`` and fill in the two names below.

``EXPECTED: dict[str, dict]`` maps the name ``reverse()`` takes ("jobs:detail",
"annotation:label", DRF router names such as "job-detail") to a dict with:

``role``       lowest role that may use the URL: "researcher" < "annotator" < "trainer" <
               "admin"; ``None`` for public URLs (login). Required.
``method``     "GET" (default) or "POST": what the walk sends. POST-only views need "POST".
``kwargs``     URL kwargs: a dict, or a callable ``objects -> dict`` taking what
               ``make_objects`` returned, e.g. ``lambda o: {"pk": o["video"].pk}``.
``data``       POST body: a dict or a callable ``objects -> dict`` (default: empty).
``ok``         status codes accepted for roles that may use the URL; default ``(200,)`` for
               GET and ``(200, 302)`` for POST. A 302 to the login page never counts as ok
               for non-public URLs.
``anonymous``  "login" (302 to the login page), "denied" (401/403, API style) or "ok"
               (same codes as ``ok``). Default: "ok" for public URLs, "denied" for DRF
               views, "login" for everything else.
``why``        optional note shown in failure messages.

Roles below ``role`` must get 403. Each role's request runs inside a savepoint that is
rolled back afterwards, with fresh objects from ``make_objects(users)`` (``users`` maps the
role names to users), so POST entries may change or delete what they are given. Build the
objects so every allowed role really passes, e.g. jobs owned by the annotator, because
annotators may only control their own jobs.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.utils import timezone

from viva.models import Collection, Image, Job, Shot, Video


def make_objects(users: dict) -> dict:
    collection = Collection.objects.create(name="Role walk collection")
    video = Video.objects.create(
        collection=collection,
        title="Role walk video",
        file="videos/walk.mp4",
        sha256="f" * 64,
        fps=25,
        n_frames=50,
        duration_ms=2000,
        width=160,
        height=96,
    )
    shot = Shot.objects.create(
        video=video, number=1, start_frame=0, end_frame=49, start_ms=0, end_ms=2000
    )
    Image.objects.create(
        collection=collection,
        video=video,
        shot=shot,
        frame=25,
        time_ms=1000,
        file="keyframes/walk.jpg",
        thumbnail="keyframes/walk_t.jpg",
        sha256="e" * 64,
        width=160,
        height=96,
    )
    running = Job.objects.create(
        kind="worker_check",
        status=Job.Status.RUNNING,
        heartbeat_at=timezone.now(),
        created_by=users["annotator"],
    )
    failed = Job.objects.create(
        kind="worker_check",
        status=Job.Status.FAILED,
        error="walk",
        created_by=users["annotator"],
    )
    probe = Path(settings.MEDIA_ROOT) / "walk" / "probe.txt"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("role walk")
    from django.contrib.auth import get_user_model

    other = get_user_model().objects.create_user("walk-target", password=None)
    return {
        "collection": collection,
        "video": video,
        "running_job": running,
        "failed_job": failed,
        "media_path": "walk/probe.txt",
        "user": other,
    }


def _collection(o):
    return {"pk": o["collection"].pk}


def _video(o):
    return {"pk": o["video"].pk}


def _running(o):
    return {"pk": o["running_job"].pk}


def _failed(o):
    return {"pk": o["failed_job"].pk}


EXPECTED: dict[str, dict] = {
    # Archive
    "home": {"role": "researcher"},
    "archive:collections": {"role": "researcher"},
    "archive:collection": {"role": "researcher", "kwargs": _collection},
    "archive:video": {"role": "researcher", "kwargs": _video},
    "archive:upload": {"role": "trainer"},
    "media": {"role": "researcher", "kwargs": lambda o: {"path": o["media_path"]}},
    # Jobs
    "jobs:list": {"role": "researcher"},
    "jobs:status_list": {"role": "researcher"},
    "jobs:detail": {"role": "researcher", "kwargs": _running},
    "jobs:status": {"role": "researcher", "kwargs": _running},
    "jobs:cancel": {
        "role": "annotator",
        "method": "POST",
        "kwargs": _running,
        "ok": (302,),
        "why": "the job belongs to the annotator",
    },
    "jobs:resume": {
        "role": "annotator",
        "method": "POST",
        "kwargs": _failed,
        "ok": (302,),
        "why": "the job belongs to the annotator",
    },
    "jobs:worker_check": {"role": "trainer", "method": "POST", "ok": (302,)},
    # Users
    "users:list": {"role": "admin"},
    "users:create": {"role": "admin"},
    "users:edit": {"role": "admin", "kwargs": lambda o: {"pk": o["user"].pk}},
    # Accounts
    "login": {"role": None},
    "logout": {"role": None, "method": "POST", "ok": (302,)},
    # REST API (DRF router names) and its schema and docs
    "api-root": {"role": "researcher"},
    "collection-list": {"role": "researcher"},
    "collection-detail": {"role": "researcher", "kwargs": _collection},
    "video-list": {"role": "researcher"},
    "video-detail": {"role": "researcher", "kwargs": _video},
    "job-list": {"role": "researcher"},
    "job-detail": {"role": "researcher", "kwargs": _running},
    "job-cancel": {"role": "annotator", "method": "POST", "kwargs": _running},
    "job-resume": {"role": "annotator", "method": "POST", "kwargs": _failed},
    "api-schema": {"role": "researcher"},
    "api-docs": {"role": "researcher"},
}
