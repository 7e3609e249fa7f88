"""REST API under /api/v1/: reading the archive and jobs, controlling jobs, auth, schema, docs."""

from __future__ import annotations

import re
from unittest import mock

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from viva.models import Collection, Job, Video


@pytest.fixture(autouse=True)
def _no_enqueue():
    with mock.patch("viva.tasks.run_job_task.apply_async") as sent:
        yield sent


@pytest.fixture
def archive(db):
    collection = Collection.objects.create(name="News 1970s", description="Evening news")
    video = Video.objects.create(
        collection=collection,
        title="Evening news 1974",
        file="videos/a.mp4",
        sha256="a" * 64,
        year=1974,
        fps=25,
        n_frames=250,
        duration_ms=10_000,
        width=640,
        height=360,
        metadata={"channel": "one"},
    )
    return {"collection": collection, "video": video}


@pytest.fixture
def jobs(users):
    return {
        "mine": Job.objects.create(
            kind="worker_check",
            title="Mine",
            status=Job.Status.RUNNING,
            heartbeat_at=timezone.now(),
            created_by=users["annotator"],
            progress=3,
            total=10,
            metrics={"loss": [[1, 0.5]]},
        ),
        "theirs": Job.objects.create(
            kind="worker_check",
            title="Theirs",
            status=Job.Status.FAILED,
            error="boom",
            created_by=users["trainer"],
        ),
    }


def test_collections_and_videos(client_for, archive):
    client = client_for("researcher")
    listing = client.get("/api/v1/collections/").json()
    assert listing["count"] == 1
    assert listing["results"][0] == {
        "id": archive["collection"].pk,
        "name": "News 1970s",
        "kind": "archive",
        "description": "Evening news",
        "created_at": listing["results"][0]["created_at"],
    }
    detail = client.get(f"/api/v1/collections/{archive['collection'].pk}/").json()
    assert detail["name"] == "News 1970s"

    videos = client.get("/api/v1/videos/").json()["results"]
    assert len(videos) == 1
    video = videos[0]
    assert video["title"] == "Evening news 1974" and video["year"] == 1974
    assert video["collection"] == archive["collection"].pk
    assert video["metadata"] == {"channel": "one"}
    assert "sha256" not in video and "file" not in video  # no storage internals
    assert client.get(f"/api/v1/videos/{archive['video'].pk}/").json()["fps"] == 25
    assert client.get("/api/v1/videos/999999/").status_code == 404


def test_pagination(client_for):
    for i in range(5):
        Collection.objects.create(name=f"c{i}")
    page = client_for("researcher").get("/api/v1/collections/", {"limit": 2, "offset": 2}).json()
    assert page["count"] == 5 and len(page["results"]) == 2
    assert page["next"] and page["previous"]


def test_jobs_list_and_detail(client_for, jobs):
    client = client_for("researcher")
    listing = client.get("/api/v1/jobs/").json()
    assert {j["title"] for j in listing["results"]} == {"Mine", "Theirs"}
    detail = client.get(f"/api/v1/jobs/{jobs['mine'].pk}/").json()
    assert detail["status"] == "running" and detail["progress"] == 3 and detail["total"] == 10
    assert detail["metrics"] == {"loss": [[1, 0.5]]}
    assert client.get(f"/api/v1/jobs/{jobs['theirs'].pk}/").json()["error"] == "boom"


def test_annotator_cancels_own_job(client_for, jobs):
    response = client_for("annotator").post(f"/api/v1/jobs/{jobs['mine'].pk}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelling"
    assert Job.objects.get(pk=jobs["mine"].pk).status == Job.Status.CANCELLING


def test_annotator_cannot_control_others_jobs(client_for, jobs):
    client = client_for("annotator")
    for action in ("cancel", "resume"):
        response = client.post(f"/api/v1/jobs/{jobs['theirs'].pk}/{action}/")
        assert response.status_code == 403
        assert "own jobs" in response.json()["detail"]
    assert Job.objects.get(pk=jobs["theirs"].pk).status == Job.Status.FAILED


def test_researcher_can_read_but_not_cancel(client_for, users, jobs):
    own = Job.objects.create(
        kind="worker_check",
        status=Job.Status.RUNNING,
        heartbeat_at=timezone.now(),
        created_by=users["researcher"],
    )
    client = client_for("researcher")
    assert client.get(f"/api/v1/jobs/{own.pk}/").status_code == 200
    for job in (own, jobs["mine"]):
        assert client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 403
        assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING


def test_trainer_resumes_any_job(client_for, jobs, _no_enqueue, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for("trainer").post(f"/api/v1/jobs/{jobs['theirs'].pk}/resume/")
    assert response.status_code == 200 and response.json()["status"] == "queued"
    _no_enqueue.assert_called_once_with((jobs["theirs"].pk,), queue="default")


def test_api_is_read_only_for_the_archive(client_for, archive):
    client = client_for("admin")
    assert client.post("/api/v1/collections/", {"name": "x"}).status_code == 405
    assert client.delete(f"/api/v1/videos/{archive['video'].pk}/").status_code == 405
    assert client.post("/api/v1/jobs/", {"kind": "worker_check"}).status_code == 405


def test_token_auth(users, archive, jobs):
    token = Token.objects.create(user=users["annotator"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/collections/").status_code == 200
    # Token clients need no CSRF token for writes.
    response = client.post(f"/api/v1/jobs/{jobs['mine'].pk}/cancel/")
    assert response.status_code == 200, response.content

    client.credentials(HTTP_AUTHORIZATION="Token not-a-valid-token")
    assert client.get("/api/v1/collections/").status_code in (401, 403)


def test_session_auth_enforces_csrf_on_writes(users, jobs):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(users["annotator"])
    response = client.post(f"/api/v1/jobs/{jobs['mine'].pk}/cancel/")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert Job.objects.get(pk=jobs["mine"].pk).status == Job.Status.RUNNING


def test_inactive_user_token_is_refused(users):
    token = Token.objects.create(user=users["admin"])
    users["admin"].is_active = False
    users["admin"].save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/collections/").status_code in (401, 403)


@pytest.mark.parametrize("url", ["/api/v1/collections/", "/api/v1/videos/", "/api/v1/jobs/"])
def test_anonymous_is_refused(db, url):
    response = APIClient().get(url)
    assert response.status_code in (401, 403)
    assert "results" not in response.json()


def test_anonymous_cannot_cancel(jobs):
    response = APIClient().post(f"/api/v1/jobs/{jobs['mine'].pk}/cancel/")
    assert response.status_code in (401, 403)
    assert Job.objects.get(pk=jobs["mine"].pk).status == Job.Status.RUNNING


def test_schema_for_logged_in_users(client_for, client):
    response = client_for("researcher").get(reverse("api-schema"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "openapi" in body and "/api/v1/jobs/{id}/cancel/" in body
    response = client.get(reverse("api-schema"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_docs_page_loads_without_cdn(client_for):
    response = client_for("researcher").get(reverse("api-docs"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html.lower()
    assert "drf_spectacular_sidecar" in html  # assets are served locally
    external = re.findall(r"""(?:src|href)\s*=\s*["'](?:https?:)?//[^"']+""", html)
    assert external == [], external
    for cdn in ("cdn.jsdelivr", "unpkg.com", "cdnjs", "googleapis"):
        assert cdn not in html
