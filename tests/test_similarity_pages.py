"""Similarity search through HTTP (issue 6, item 4): the researcher page by upload, URL,
archive image and concept positives; bad input; no index yet (and the build button);
a backend that is down; the API; the acquisition page with real results; the grids'
"find similar" target. Uses the fakes of ``tests/test_similarity_service.py``.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image as PILImage

from annotation.labels import save_labels
from annotation.models import Category, Label
from retrieval.search import backends, indexing, service
from tests.test_grid_views import grid_of, make_keyframes, make_stills, select
from tests.test_similarity_service import (  # noqa: F401 - fixtures
    fake_index,
    fake_model,
    media,
)
from viva.media import media_path
from viva.models import Image, Job

pytestmark = pytest.mark.django_db


def jpeg_of(image, name: str = "query.jpg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, media_path(image.file).read_bytes(), "image/jpeg")


@pytest.fixture
def archive(media, fake_model, fake_index):  # noqa: F811
    """Eight stills and four keyframes, indexed."""
    stills = make_stills(8, media / "in")
    frames = make_keyframes(2, per_shot=2)
    indexing.index_images()
    return stills, frames


@pytest.fixture
def web() -> Iterator[dict]:
    """A local image host (127.0.0.1 is allowed by the test settings' fetch rules)."""
    routes: dict[str, tuple[int, str, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            status, kind, body = routes.get(self.path, (404, "text/plain", b"missing"))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield {"base": base, "routes": routes}
    server.shutdown()
    server.server_close()


def results_page(client, response):
    assert response.status_code == 302, response.content.decode()[:2000]
    assert "?query=" in response["Location"]
    page = client.get(response["Location"])
    assert page.status_code == 200
    return page, grid_of(page)


# --------------------------------------------------------------------------- researcher page


def test_upload_query_shows_results_with_distance(client_for, archive):
    stills, frames = archive
    client = client_for("researcher")
    response = client.post(
        reverse("retrieval:similar"),
        {"mode": "images", "files": [jpeg_of(stills[2])], "k": 5, "scope": "all"},
    )
    page, grid = results_page(client, response)
    items = grid["items"]
    assert items[0]["key"] == str(stills[2].pk)
    assert items[0]["extra"] == "distance 0"
    assert grid["readonly"] is True
    assert len(items) == 5
    # "Find similar" from a result searches from that image on this page.
    assert items[0]["similar_url"].startswith(reverse("retrieval:similar") + "?image=")
    html = page.content.decode()
    assert "Results for query.jpg" in html
    assert f"{12} of {12} images" in html.replace(",", "")


def test_default_scope_is_archive_keyframes(client_for, archive):
    stills, frames = archive
    client = client_for("researcher")
    response = client.post(
        reverse("retrieval:similar"), {"mode": "images", "files": [jpeg_of(stills[2])]}
    )
    _page, grid = results_page(client, response)
    assert sorted(int(i["key"]) for i in grid["items"]) == sorted(f.pk for f in frames)
    assert all(i["link"].startswith("/archive/videos/") for i in grid["items"])


def test_url_query(client_for, archive, web):
    stills, _frames = archive
    web["routes"]["/photo.jpg"] = (200, "image/jpeg", media_path(stills[5].file).read_bytes())
    client = client_for("researcher")
    response = client.post(
        reverse("retrieval:similar"),
        {"mode": "images", "urls": web["base"] + "/photo.jpg", "k": 3, "scope": "all"},
    )
    _page, grid = results_page(client, response)
    assert grid["items"][0]["key"] == str(stills[5].pk)
    assert grid["items"][0]["extra"] == "distance 0"


def test_bad_input_gets_clear_errors(client_for, archive, web):
    web["routes"]["/page.html"] = (200, "text/html", b"<html>not an image</html>")
    client = client_for("researcher")
    url = reverse("retrieval:similar")
    not_image = SimpleUploadedFile("notes.jpg", b"plain text, not a picture", "image/jpeg")
    response = client.post(url, {"mode": "images", "files": [not_image]})
    assert response.status_code == 400
    assert "notes.jpg" in response.content.decode()
    response = client.post(url, {"mode": "images", "urls": web["base"] + "/page.html"})
    assert response.status_code == 400
    assert "Nothing was searched" in response.content.decode()
    response = client.post(url, {"mode": "images", "urls": web["base"] + "/missing.jpg"})
    assert response.status_code == 400
    assert "404" in response.content.decode()
    response = client.post(url, {"mode": "images", "urls": "http://127.0.0.1:9/none.jpg"})
    assert response.status_code == 400
    response = client.post(url, {"mode": "images"})
    assert response.status_code == 400
    assert "Choose image files or paste image URLs" in response.content.decode()


def test_too_large_upload_is_refused(client_for, archive):
    huge = PILImage.new("RGB", (9000, 9000), (10, 20, 30))
    out = io.BytesIO()
    huge.save(out, "PNG")
    client = client_for("researcher")
    response = client.post(
        reverse("retrieval:similar"),
        {"mode": "images", "files": [SimpleUploadedFile("huge.png", out.getvalue(), "image/png")]},
    )
    assert response.status_code == 400
    assert "huge.png" in response.content.decode()


def test_query_from_a_grid_image(client_for, archive):
    stills, frames = archive
    client = client_for("researcher")
    response = client.get(reverse("retrieval:similar"), {"image": frames[0].pk})
    _page, grid = results_page(client, response)
    keys = [int(i["key"]) for i in grid["items"]]
    assert frames[0].pk not in keys
    assert sorted(keys) == sorted(f.pk for f in frames[1:])
    response = client.get(reverse("retrieval:similar"), {"image": 999999})
    assert response.status_code == 302 and response["Location"] == reverse("retrieval:similar")


def test_query_with_concept_positives(client_for, archive, users):
    stills, _frames = archive
    concept = Category.objects.create(name="Bright things")
    save_labels(
        concept,
        [(stills[0].pk, Label.POSITIVE), (stills[1].pk, Label.POSITIVE)],
        user=users["annotator"],
    )
    client = client_for("researcher")
    response = client.post(
        reverse("retrieval:similar"),
        {"mode": "positives", "category": concept.pk, "scope": "all", "k": 50},
    )
    _page, grid = results_page(client, response)
    keys = {int(i["key"]) for i in grid["items"]}
    assert keys.isdisjoint({stills[0].pk, stills[1].pk}) and len(keys) == 10
    empty = Category.objects.create(name="Nothing yet")
    response = client.post(
        reverse("retrieval:similar"), {"mode": "positives", "category": empty.pk}
    )
    assert response.status_code == 400
    assert "has no positive images yet" in response.content.decode()


# --------------------------------------------------------------------------- no index


def test_before_any_index_the_page_says_so_and_offers_to_build(client_for, media, fake_index):  # noqa: F811
    make_stills(3, media / "in")
    page = client_for("researcher").get(reverse("retrieval:similar"))
    html = page.content.decode()
    assert page.status_code == 200
    assert "Not built yet." in html and "no hash-code model" in html
    assert 'data-testid="build-index"' not in html
    assert "Ask a trainer" in html
    trainer = client_for("trainer")
    html = trainer.get(reverse("retrieval:similar")).content.decode()
    assert 'data-testid="build-index"' in html
    # Querying says the same instead of failing.
    response = client_for("researcher").post(
        reverse("retrieval:similar"),
        {"mode": "images", "files": [SimpleUploadedFile("q.jpg", _jpeg(), "image/jpeg")]},
    )
    assert response.status_code == 200
    assert "no hash-code model" in response.content.decode()
    # The button starts the "Hash codes" page's fit (its checks: one hashing job at a
    # time, device, weights), which indexes afterwards; a second click starts no other.
    response = trainer.post(reverse("retrieval:similar_index"))
    assert response.status_code == 302
    job = Job.objects.get(kind=service.FIT_JOB_KIND)
    assert job.queue == "gpu" and job.device
    again = trainer.post(reverse("retrieval:similar_index"), follow=True)
    assert "Another hashing job is still queued" in again.content.decode()
    assert Job.objects.filter(kind__in=[service.FIT_JOB_KIND, service.JOB_KIND]).count() == 1
    html = trainer.get(reverse("retrieval:similar")).content.decode()
    assert f'data-status-url="{reverse("jobs:status", args=[job.pk])}"' in html
    assert 'role="progressbar"' in html
    assert client_for("annotator").post(reverse("retrieval:similar_index")).status_code == 403


def test_acquisition_page_without_index_links_trainers_to_the_build(client_for, media, fake_index):  # noqa: F811
    concept = Category.objects.create(name="Early")
    for role, linked in (("annotator", False), ("trainer", True)):
        client = client_for(role)
        select(client, concept)
        html = client.get(reverse("annotation:similar")).content.decode()
        assert "Not available yet." in html and "no hash-code model" in html
        assert ('data-testid="build-index-link"' in html) is linked


def _jpeg() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (40, 30), (200, 10, 10)).save(out, "JPEG")
    return out.getvalue()


# --------------------------------------------------------------------------- backend down


def test_backend_down_is_a_clear_error_and_the_rest_works(client_for, archive, fake_index):  # noqa: F811
    stills, _frames = archive
    fake_index.down = True
    client = client_for("researcher")
    page = client.get(reverse("retrieval:similar"))
    assert page.status_code == 200
    assert "Search is unavailable" in page.content.decode()
    response = client.post(
        reverse("retrieval:similar"), {"mode": "images", "files": [jpeg_of(stills[0])]}
    )
    assert response.status_code == 503
    assert "cannot be used right now" in response.content.decode()
    api = client.post(reverse("api-similar"), {"image": [jpeg_of(stills[0])]})
    assert api.status_code == 503 and "cannot be used right now" in api.json()["detail"]
    assert client.get(reverse("home")).status_code == 200
    assert client.get(reverse("retrieval:search")).status_code == 200


# --------------------------------------------------------------------------- API


def test_api_by_upload_id_and_url(client_for, archive, web):
    stills, frames = archive
    client = client_for("researcher")
    response = client.post(
        reverse("api-similar"), {"image": [jpeg_of(stills[4])], "k": 2, "scope": "all"}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["results"][0]["image"] == stills[4].pk
    assert body["results"][0]["distance"] == 0
    assert body["index"]["indexed"] == 12
    response = client.post(reverse("api-similar"), {"image_id": [frames[0].pk]})
    assert [r["image"] for r in response.json()["results"]] != []
    assert all(r["video"] == frames[0].video_id for r in response.json()["results"])
    web["routes"]["/x.jpg"] = (200, "image/jpeg", media_path(stills[7].file).read_bytes())
    response = client.post(
        reverse("api-similar"), {"url": web["base"] + "/x.jpg", "k": 1, "scope": "all"}
    )
    assert response.json()["results"][0]["image"] == stills[7].pk
    bad = client.post(reverse("api-similar"), {"image": [SimpleUploadedFile("a.png", b"zz")]})
    assert bad.status_code == 400 and "a.png" in str(bad.json())


def test_api_json_url_string_is_one_url(client_for, archive, web):
    stills, _frames = archive
    web["routes"]["/y.jpg"] = (200, "image/jpeg", media_path(stills[6].file).read_bytes())
    response = client_for("researcher").post(
        reverse("api-similar"),
        {"url": web["base"] + "/y.jpg", "k": 1, "scope": "all"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["results"][0]["image"] == stills[6].pk


def test_api_limits_the_number_of_image_ids(client_for, archive):
    from annotation.views.query import MAX_POSITIVES

    stills, _frames = archive
    client = client_for("researcher")
    many = [stills[0].pk] * (MAX_POSITIVES + 1)
    response = client.post(
        reverse("api-similar"), {"image_id": many}, content_type="application/json"
    )
    assert response.status_code == 400 and "image_id" in response.json()
    one = client.post(
        reverse("api-similar"),
        {"image_id": stills[0].pk, "scope": "all"},
        content_type="application/json",
    )
    assert one.status_code == 200, one.content


def test_api_without_index_is_409(client_for, media, fake_index):  # noqa: F811
    response = client_for("researcher").post(
        reverse("api-similar"), {"image": [SimpleUploadedFile("q.jpg", _jpeg(), "image/jpeg")]}
    )
    assert response.status_code == 409
    assert "no hash-code model" in response.json()["detail"]


# --------------------------------------------------------------------------- acquisition


def test_acquisition_page_returns_real_results(client_for, archive, users):
    stills, _frames = archive
    concept = Category.objects.create(name="Acquired")
    client = client_for("annotator")
    select(client, concept)
    response = client.post(
        reverse("annotation:similar"), {"mode": "images", "files": [jpeg_of(stills[3])], "k": 4}
    )
    _page, grid = results_page(client, response)
    assert grid["items"][0]["key"] == str(stills[3].pk)
    assert grid["items"][0]["extra"].startswith("distance 0")
    assert grid["source"] == "similarity" and not grid["readonly"]


def test_grid_similar_target_depends_on_page_and_role(client_for, archive):
    stills, _frames = archive
    concept = Category.objects.create(name="Target")
    annotator = client_for("annotator")
    select(annotator, concept)
    response = annotator.get(reverse("annotation:similar"), {"image": stills[0].pk})
    html = annotator.get(response["Location"]).content.decode()
    assert f'data-similar-url="{reverse("annotation:similar")}"' in html
    response = annotator.get(reverse("retrieval:similar"), {"image": stills[0].pk})
    html = annotator.get(response["Location"]).content.decode()
    assert f'data-similar-url="{reverse("retrieval:similar")}"' in html
    # Researchers cannot use the acquisition page: their grids search on the research page.
    researcher = client_for("researcher")
    response = researcher.get(reverse("retrieval:similar"), {"image": stills[0].pk})
    html = researcher.get(response["Location"]).content.decode()
    assert f'data-similar-url="{reverse("retrieval:similar")}"' in html


# --------------------------------------------------------------------------- new images


@pytest.fixture
def shared_dirs(monkeypatch, settings, tmp_path):
    """Models and index in tmp_path for this process and the worker it starts."""
    for name, value in (
        ("VIVA_MODELS_DIR", tmp_path / "models"),
        ("VIVA_INDEX_DIR", tmp_path / "index"),
        ("VIVA_SEARCH_BACKEND", "faiss"),
    ):
        monkeypatch.setenv(name, str(value))
        setattr(settings, name, value if name != "VIVA_SEARCH_BACKEND" else "faiss")
    service.forget_encoders()
    backends.forget()
    yield tmp_path
    service.forget_encoders()
    backends.forget()


@pytest.fixture
def celery_worker(shared_dirs, celery_worker):
    """conftest's real worker, started after ``shared_dirs`` so it inherits them."""
    return celery_worker


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_new_images_are_indexed_as_they_arrive(shared_dirs, celery_worker, client_for):
    """An upload on the acquisition page → images_added → one job → a worker indexes it."""
    from retrieval.models import HashCode
    from tests.conftest import wait_for
    from tests.test_similarity_service import fit_tiny_model

    stills = make_stills(4, shared_dirs / "in")
    version = fit_tiny_model()
    indexing.index_images(version)
    concept = Category.objects.create(name="Arrivals")
    client = client_for("annotator")
    select(client, concept)
    new = PILImage.new("RGB", (64, 48), (250, 200, 0))
    out = io.BytesIO()
    new.save(out, "JPEG")
    response = client.post(
        reverse("annotation:upload"),
        {"files": [SimpleUploadedFile("new.jpg", out.getvalue(), "image/jpeg")]},
    )
    assert response.status_code == 302
    job = Job.objects.get(kind=service.JOB_KIND)
    done = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status__in=["succeeded", "failed"]).first(),
        timeout=180,
    )
    assert done.status == "succeeded", (done.error, done.log_tail)
    assert done.result["indexed"] == 1
    added = set(done.params["image_ids"])
    assert len(added) == 1 and not added & {s.pk for s in stills}
    assert HashCode.objects.filter(version=version).count() == 5
    (new_id,) = added
    stored = PILImage.open(media_path(Image.objects.get(pk=new_id).file)).convert("RGB")
    # Reads the index files the worker wrote.
    assert service.similar_images([stored], 1) == [(new_id, 0.0)]
