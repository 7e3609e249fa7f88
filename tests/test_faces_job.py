"""Face indexing (issue 7): ``index_faces`` stores faces with thumbnails and embeddings
and marks images scanned; it is idempotent and a rescan keeps labelled faces; the
``index_faces`` job is chunked and resumable and runs through a real worker; images
arriving for a person start background detection; the page shows the state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from django.urls import reverse
from PIL import Image as PILImage
from skimage import data

from annotation.models import Annotation, Category, Label
from tests.conftest import wait_for
from training.faces import jobs as face_jobs
from training.faces.embed import embedder_source
from training.faces.pipeline import index_faces
from viva.ingest.importer import import_image
from viva.jobs import run_job
from viva.media import media_path
from viva.models import Collection, Face, Image, Job, Video
from viva.signals import images_added


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pictures(tmp_path, collection=None) -> dict[str, Image]:
    """astronaut (a face), camera (a face, greyscale), coffee (none), and one image row
    whose file is broken."""
    collection = collection or Collection.objects.create(name="Faces")
    out = {}
    for name in ("astronaut", "camera", "coffee"):
        path = tmp_path / f"{name}.png"
        PILImage.fromarray(getattr(data, name)()).save(path)
        out[name] = import_image(path, collection)[1]
    broken = Image.objects.create(
        collection=collection, file="images/broken.jpg", sha256="0" * 64, width=64, height=64
    )
    media_path(broken.file).parent.mkdir(parents=True, exist_ok=True)
    media_path(broken.file).write_bytes(b"not a jpeg")
    out["broken"] = broken
    return out


@pytest.mark.django_db
def test_index_faces_stores_faces_and_is_idempotent(tmp_path):
    imgs = pictures(tmp_path)
    ids = [i.pk for i in imgs.values()]
    stats = index_faces(ids)
    assert stats["scanned"] == 3 and stats["faces"] == 2 and stats["unreadable"] == 1
    assert stats["skipped"] == 0 and stats["faces_per_s"] > 0
    # The broken file stays unscanned: a later job tries it again.
    unscanned = Image.objects.filter(pk__in=ids, faces_scanned_at__isnull=True)
    assert list(unscanned.values_list("pk", flat=True)) == [imgs["broken"].pk]
    faces = list(Face.objects.order_by("image_id"))
    assert [f.image_id for f in faces] == [imgs["astronaut"].pk, imgs["camera"].pk]
    for face in faces:
        assert face.embedder == embedder_source() == "random"
        assert len(face.box) == 4 and len(face.landmarks) == 5 and face.score > 0.9
        assert 0 < face.quality <= 1
        vec = face.vector()
        assert vec.shape == (512,) and np.linalg.norm(vec) == pytest.approx(1, abs=1e-2)
        with PILImage.open(media_path(face.thumbnail)) as thumb:
            assert thumb.size == (160, 160)
    # Twice: nothing new.
    again = index_faces(ids)
    assert again["skipped"] == 3 and again["unreadable"] == 1
    assert again["faces"] == 0 and Face.objects.count() == 2


@pytest.mark.django_db
def test_rescan_keeps_labelled_faces(tmp_path, users):
    imgs = pictures(tmp_path)
    ids = [imgs["astronaut"].pk, imgs["camera"].pk]
    index_faces(ids)
    person = Category.objects.create(name="Astronaut", kind=Category.Kind.PERSON)
    labelled = Face.objects.get(image=imgs["astronaut"])
    other = Face.objects.get(image=imgs["camera"])
    Annotation.objects.create(
        image=imgs["astronaut"],
        face=labelled,
        category=person,
        value=Label.POSITIVE,
        user=users["annotator"],
        updated_at=labelled.created_at,
    )
    # A thumbnail of an earlier detection (another box) must go with its row.
    old_thumb = media_path("faces/old-detection.jpg")
    old_thumb.write_bytes(media_path(other.thumbnail).read_bytes())
    Face.objects.filter(pk=other.pk).update(thumbnail="faces/old-detection.jpg")
    stats = index_faces(ids, rescan=True)
    assert stats["scanned"] == 2 and stats["kept"] == 1 and stats["faces"] == 1
    assert Face.objects.filter(pk=labelled.pk).exists()  # its label is not lost
    assert not Face.objects.filter(pk=other.pk).exists()  # replaced by the new detection
    assert Face.objects.filter(image=imgs["astronaut"]).count() == 1  # not stored twice
    [new] = Face.objects.filter(image=imgs["camera"])
    assert media_path(new.thumbnail).is_file()
    assert not old_thumb.exists()


@pytest.mark.django_db
def test_job_is_chunked_and_resumable(tmp_path, users, monkeypatch):
    imgs = pictures(tmp_path)
    index_faces([imgs["coffee"].pk])  # done by an earlier attempt
    monkeypatch.setattr(face_jobs, "CHUNK", 1)
    job = face_jobs.start_face_indexing(user=users["trainer"])
    assert job.kind == "index_faces" and job.queue == "gpu" and job.params == {}
    assert run_job(job.pk) == Job.Status.SUCCEEDED
    job.refresh_from_db()
    assert job.result["scanned"] == 2 and job.result["faces"] == 2
    assert job.result["unreadable"] == 1
    assert job.progress == job.total == 4
    assert len(job.metrics["faces/s"]) == 3 and len(job.metrics["images/s"]) == 3
    assert "could not be read" in job.log_tail and "RANDOM weights" in job.log_tail
    # A rescan of one collection starts again, and stays resumable by its start time.
    rescan = face_jobs.start_face_indexing(
        collection_ids=[imgs["coffee"].collection_id], rescan=True
    )
    assert run_job(rescan.pk) == Job.Status.SUCCEEDED
    rescan.refresh_from_db()
    assert rescan.result["scanned"] == 3 and Face.objects.count() == 2
    # Only some images.
    some = face_jobs.start_face_indexing(image_ids=[imgs["camera"].pk])
    assert run_job(some.pk) == Job.Status.SUCCEEDED
    some.refresh_from_db()
    assert some.result["total"] == 1 and some.result["scanned"] == 0


@pytest.mark.django_db
def test_missing_weights_fail_the_job_with_advice(tmp_path, settings, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    settings.VIVA_WEIGHTS_DIR = tmp_path / "weights"
    settings.VIVA_FACE_ALLOW_RANDOM_WEIGHTS = False
    settings.VIVA_ALLOW_WEIGHT_DOWNLOAD = False
    pictures(tmp_path)
    job = face_jobs.start_face_indexing()
    assert run_job(job.pk) == Job.Status.FAILED
    job.refresh_from_db()
    assert "VGGFace2" in job.error and "VIVA_WEIGHTS_DIR" in job.error
    assert not Image.objects.filter(faces_scanned_at__isnull=False).exists()


@pytest.mark.django_db
def test_arriving_images_start_background_detection(tmp_path):
    imgs = pictures(tmp_path)
    ids = [imgs["astronaut"].pk, imgs["camera"].pk]
    concept = Category.objects.create(name="Jeans")
    person = Category.objects.create(name="Someone", kind=Category.Kind.PERSON)
    images_added.send(sender=None, image_ids=ids, category_id=concept.pk, source="crawler")
    assert not Job.objects.filter(kind="index_faces").exists()
    images_added.send(sender=None, image_ids=ids, category_id=None, source="import")
    assert not Job.objects.filter(kind="index_faces").exists()  # archive never indexed
    images_added.send(sender=None, image_ids=ids, category_id=person.pk, source="crawler")
    job = Job.objects.get(kind="index_faces")
    assert job.params["image_ids"] == sorted(ids)
    # An archive keyframe gets face-indexed: now the archive has been face-indexed.
    video = Video.objects.create(
        collection=imgs["coffee"].collection,
        title="News",
        file="videos/news.mp4",
        sha256="2" * 64,
        fps=25,
        n_frames=10,
        duration_ms=400,
        width=64,
        height=64,
    )
    Image.objects.filter(pk=imgs["coffee"].pk).update(video=video, frame=0)
    index_faces([imgs["coffee"].pk])
    images_added.send(sender=None, image_ids=ids[:1], category_id=None, source="import")
    assert Job.objects.filter(kind="index_faces").count() == 2


@pytest.mark.django_db
def test_faces_page(client_for, tmp_path):
    imgs = pictures(tmp_path)
    index_faces([imgs["astronaut"].pk])
    url = reverse("training:faces")
    assert client_for("annotator").get(url).status_code == 403
    client = client_for("trainer")
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="scanned">1 / 4<' in html
    assert 'data-testid="faces">1<' in html and "random: 1" in html
    assert "recognition is meaningless until the VGGFace2 weights are installed" in html
    collection = imgs["astronaut"].collection
    response = client.post(url, {"collection": collection.pk})
    job = Job.objects.get(kind="index_faces")
    assert response.status_code == 302 and response["Location"].endswith(f"?job={job.pk}")
    assert job.params == {"collection_ids": [collection.pk]}
    page = client.get(response["Location"]).content.decode()
    assert "Face indexing started" in page and f"#{job.pk}" in page
    assert 'data-status-url="' in page
    bad = client.post(url, {"collection": "999999"}, follow=True).content.decode()
    assert "no such collection" in bad and Job.objects.count() == 1
    assert client.get(url + "?job=x").status_code == 404


@pytest.mark.django_db
def test_faces_page_without_weights(client_for, settings, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    settings.VIVA_WEIGHTS_DIR = tmp_path / "weights"
    settings.VIVA_FACE_ALLOW_RANDOM_WEIGHTS = False
    settings.VIVA_ALLOW_WEIGHT_DOWNLOAD = False
    client = client_for("trainer")
    html = client.get(reverse("training:faces")).content.decode()
    assert 'data-testid="missing-warning"' in html and "20180402-114759-vggface2.pt" in html
    refused = client.post(reverse("training:faces"), follow=True).content.decode()
    assert "Face indexing was not started" in refused
    assert not Job.objects.exists()


@pytest.mark.worker
@pytest.mark.slow
def test_index_job_through_a_real_worker(celery_worker, tmp_path, users):
    imgs = pictures(tmp_path)
    job = face_jobs.start_face_indexing(user=users["trainer"])
    done = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status__in=Job.FINISHED).first(), timeout=180
    )
    assert done.status == Job.Status.SUCCEEDED, (done.error, done.log_tail)
    assert done.result["scanned"] == 3 and done.result["faces"] == 2
    assert done.result["unreadable"] == 1
    assert done.device == "cpu" and done.metrics["faces/s"][0][1] > 0
    assert Face.objects.filter(image=imgs["astronaut"]).count() == 1
    assert list(Image.objects.filter(faces_scanned_at__isnull=True)) == [imgs["broken"]]
