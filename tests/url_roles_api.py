"""Expected access of the REST API's annotation, training and retrieval endpoints
(``annotation/api.py``, ``training/api.py``, ``retrieval/api.py``); read by
``tests/test_roles.py`` (format: docstring of ``tests/url_roles_viva.py``).

Several entries expect a 400 or 409 for the roles that may use the URL: the walk sends
no query string and form-encoded bodies, so the request passes the role check and is
then refused for its input (or for the missing model) — which proves the role check let
it through; ``tests/test_api_v1.py`` covers the successful calls.
"""

from __future__ import annotations

import io

from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from PIL import Image as PILImage

from annotation.models import Annotation, Category
from viva.models import Collection, Image, Video


def make_objects(users: dict) -> dict:
    collection = Collection.objects.create(name="API walk collection")
    video = Video.objects.create(
        collection=collection,
        title="API walk video",
        file="videos/api-walk.mp4",
        sha256="d" * 64,
        fps=25,
        n_frames=50,
        duration_ms=2000,
        width=160,
        height=96,
    )
    image = Image.objects.create(
        collection=collection,
        video=video,
        frame=25,
        time_ms=1000,
        file="keyframes/api-walk.jpg",
        sha256="c" * 64,
        width=160,
        height=96,
    )
    category = Category.objects.create(name="API walk concept")
    annotation = Annotation.objects.create(
        image=image, category=category, value=1, updated_at=timezone.now()
    )
    return {"image": image, "category": category, "annotation": annotation}


def _jpeg(objects) -> dict:
    buffer = io.BytesIO()
    PILImage.new("RGB", (32, 24), (200, 30, 30)).save(buffer, "JPEG")
    return {"image": SimpleUploadedFile("walk.jpg", buffer.getvalue(), "image/jpeg")}


EXPECTED: dict[str, dict] = {
    "category-list": {"role": "researcher"},
    "category-detail": {"role": "researcher", "kwargs": lambda o: {"pk": o["category"].pk}},
    "image-list": {"role": "researcher"},
    "image-detail": {"role": "researcher", "kwargs": lambda o: {"pk": o["image"].pk}},
    "annotation-list": {"role": "researcher"},
    "annotation-detail": {"role": "researcher", "kwargs": lambda o: {"pk": o["annotation"].pk}},
    "annotation-bulk": {
        "role": "annotator",
        "method": "POST",
        "data": lambda o: {
            "category": o["category"].pk,
            "labels[0]image": o["image"].pk,
            "labels[0]value": "negative",
        },
        "ok": (200,),
    },
    "api-job-training": {
        "role": "trainer",
        "method": "POST",
        "ok": (400,),
        "why": "no concept has enough positives: refused with a message after the role check",
    },
    "api-job-inference": {
        "role": "trainer",
        "method": "POST",
        "ok": (400,),
        "why": "no active model: refused with a message after the role check",
    },
    "api-job-export": {
        "role": "researcher",
        "method": "POST",
        "data": lambda o: {"category": o["category"].pk, "threshold": "0.6"},
        "ok": (201,),
    },
    "api-retrieval": {
        "role": "researcher",
        "ok": (400,),
        "why": "the walk sends no ?category=: a 400 naming the parameter",
    },
    "api-search": {
        "role": "researcher",
        "ok": (400,),
        "why": "the walk sends no ?t=: a 400 naming the parameter",
    },
    "api-classify": {
        "role": "researcher",
        "method": "POST",
        "data": _jpeg,
        "ok": (409,),
        "why": "no active model: 409 after the role check and the image check",
    },
}
