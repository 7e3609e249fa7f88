"""Review fixes of the face indexing (issue 7): a rescan re-embeds labelled faces in
place; two jobs at once never store a face twice; unreadable files are neither cleared
nor marked scanned; EXIF orientation is applied before detection; archive imports start
indexing only once archive keyframes were indexed; the web request never downloads the
face weights."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage
from skimage import data

from annotation.acquisition import IncomingImage
from annotation.models import Annotation, Category, Label
from retrieval.models import InferenceRun, ModelVersion, Prediction
from tests.test_faces_job import pictures
from training import apps as training_apps
from training.faces import embed as embed_mod
from training.faces import pipeline
from training.faces.jobs import start_face_indexing
from training.faces.pipeline import index_faces
from viva.media import media_path
from viva.models import Collection, Face, Image, Job, Video
from viva.signals import images_added


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def label(face: Face, user) -> Annotation:
    person = Category.objects.get_or_create(name="Astronaut", kind=Category.Kind.PERSON)[0]
    return Annotation.objects.create(
        image_id=face.image_id,
        face=face,
        category=person,
        value=Label.POSITIVE,
        user=user,
        updated_at=face.created_at,
    )


@pytest.mark.django_db
def test_rescan_reembeds_labelled_faces_in_place(tmp_path, users):
    imgs = pictures(tmp_path)
    index_faces([imgs["astronaut"].pk])
    face = Face.objects.get(image=imgs["astronaut"])
    annotation = label(face, users["annotator"])
    # As if embedded by older (random) weights, with a slightly different box.
    old_thumb = "faces/older.jpg"
    media_path(old_thumb).write_bytes(media_path(face.thumbnail).read_bytes())
    Face.objects.filter(pk=face.pk).update(
        embedder="old",
        embedding=Face.pack_embedding(np.ones(512, dtype=np.float32) / np.sqrt(512)),
        box=[b + 3 for b in face.box],
        quality=0.01,
        thumbnail=old_thumb,
    )
    stats = index_faces([imgs["astronaut"].pk], rescan=True)
    assert stats["scanned"] == 1 and stats["kept"] == 1 and stats["reembedded"] == 1
    assert stats["faces"] == 0
    [again] = Face.objects.filter(image=imgs["astronaut"])
    assert again.pk == face.pk and again.annotations.get() == annotation
    assert again.embedder == "random" and again.quality == pytest.approx(face.quality)
    assert again.box == face.box and again.thumbnail == face.thumbnail
    assert np.allclose(again.vector(), face.vector(), atol=1e-2)
    assert media_path(again.thumbnail).is_file() and not media_path(old_thumb).exists()


@pytest.mark.django_db
def test_an_image_done_meanwhile_by_another_job_is_not_stored_twice(tmp_path, monkeypatch):
    imgs = pictures(tmp_path)
    ids = [imgs["astronaut"].pk, imgs["camera"].pk]
    real = pipeline.analyse_arrays

    def other_job_finishes_first(arrays, **kwargs):
        found = real(arrays, **kwargs)
        Image.objects.filter(pk=imgs["astronaut"].pk).update(faces_scanned_at=timezone.now())
        return found

    monkeypatch.setattr(pipeline, "analyse_arrays", other_job_finishes_first)
    stats = index_faces(ids)
    assert stats["scanned"] == 1 and stats["skipped"] == 1 and stats["faces"] == 1
    assert list(Face.objects.values_list("image_id", flat=True)) == [imgs["camera"].pk]
    # A rescan covers images scanned before its cutoff only.
    cutoff = min(Image.objects.filter(pk__in=ids).values_list("faces_scanned_at", flat=True))
    monkeypatch.setattr(pipeline, "analyse_arrays", real)
    again = index_faces(ids, rescan=True, rescan_before=cutoff)
    assert again["scanned"] == 0 and again["skipped"] == 2 and Face.objects.count() == 1


@pytest.mark.django_db
def test_page_refuses_a_second_job_while_the_archive_is_indexed(client_for, tmp_path):
    pictures(tmp_path)
    running = start_face_indexing()
    assert running.status in Job.ACTIVE
    url = reverse("training:faces")
    client = client_for("trainer")
    response = client.post(url, follow=True)
    html = response.content.decode()
    assert "Face indexing was not started" in html and f"job {running.pk}" in html
    assert Job.objects.filter(kind="index_faces").count() == 1
    Job.objects.filter(pk=running.pk).update(status=Job.Status.SUCCEEDED)
    assert client.post(url).status_code == 302
    assert Job.objects.filter(kind="index_faces").count() == 2


def make_run(image_id: int, face: Face) -> Prediction:
    person = Category.objects.get_or_create(name="Somebody", kind=Category.Kind.PERSON)[0]
    version = ModelVersion.objects.create(
        version=1,
        directory="persons/1",
        weights_path="persons/1/weights.pt",
        class_map=[{"index": 0, "id": person.pk, "name": "Somebody"}],
        is_active=True,
    )
    run = InferenceRun.objects.create(
        kind="person", model_version=version, score_floor=0.05, status="complete"
    )
    return Prediction.objects.create(
        run=run, category=person, image_id=image_id, score=0.9, face=face
    )


@pytest.mark.django_db
def test_rescan_keeps_unreadable_images_and_reports_lost_predictions(tmp_path, monkeypatch, caplog):
    imgs = pictures(tmp_path)
    ids = [imgs["astronaut"].pk, imgs["camera"].pk, imgs["coffee"].pk]
    index_faces(ids)
    scanned = dict(Image.objects.filter(pk__in=ids).values_list("pk", "faces_scanned_at"))
    astronaut_face = Face.objects.get(image=imgs["astronaut"])
    camera_face = Face.objects.get(image=imgs["camera"])
    make_run(imgs["camera"].pk, camera_face)
    # The astronaut's file is lost; the coffee is too large for the limit.
    media_path(imgs["astronaut"].file).write_bytes(b"gone")
    monkeypatch.setattr(pipeline, "MAX_PIXELS", 300_000)
    PILImage.new("RGB", (600, 600)).save(media_path(imgs["coffee"].file))
    caplog.set_level("WARNING", logger="training.faces.pipeline")
    stats = index_faces(ids, rescan=True)
    assert stats["unreadable"] == 1 and stats["too_large"] == 1 and stats["scanned"] == 1
    assert stats["predictions_dropped"] == 1
    assert Face.objects.filter(pk=astronaut_face.pk).exists()  # not cleared
    after = dict(Image.objects.filter(pk__in=ids).values_list("pk", "faces_scanned_at"))
    assert after[imgs["astronaut"].pk] == scanned[imgs["astronaut"].pk]  # retried later
    assert after[imgs["coffee"].pk] == scanned[imgs["coffee"].pk]
    assert after[imgs["camera"].pk] > scanned[imgs["camera"].pk]
    text = caplog.text
    assert "unreadable image files" in text and "too large image files" in text
    assert "run person inference again" in text
    assert not Prediction.objects.exists()


def sideways_jpeg() -> tuple[bytes, np.ndarray]:
    """A portrait (400×512) stored sideways with EXIF orientation 6, as phones do."""
    upright = np.ascontiguousarray(data.astronaut()[:, 50:450])
    sideways = PILImage.fromarray(upright).transpose(PILImage.Transpose.ROTATE_90)
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    out = io.BytesIO()
    sideways.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue(), upright


def test_exif_orientation_is_applied(tmp_path):
    content, upright = sideways_jpeg()
    path = tmp_path / "portrait.jpg"
    path.write_bytes(content)
    array = pipeline._read(path)
    assert array.shape == upright.shape
    assert np.abs(array.astype(int) - upright).mean() < 8
    incoming = IncomingImage(content=content, name="p.jpg", format="JPEG", width=512, height=400)
    assert incoming.to_pil().size == (400, 512)
    [face] = pipeline.analyse_image(PILImage.fromarray(array), embed=False)
    assert face.ok and face.box[2] <= 400


@pytest.mark.django_db
def test_face_query_of_an_unscanned_sideways_image_is_upright(tmp_path):
    from retrieval.face_search.query import from_image

    content, _ = sideways_jpeg()
    image = Image.objects.create(
        collection=Collection.objects.create(name="Phones"),
        file="images/portrait.jpg",
        sha256="1" * 64,
        width=512,
        height=400,
    )
    media_path(image.file).parent.mkdir(parents=True, exist_ok=True)
    media_path(image.file).write_bytes(content)
    query = from_image(image)
    assert (query.width, query.height) == (400, 512)
    assert len(query.usable) == 1


@pytest.mark.django_db
def test_archive_imports_start_indexing_only_after_keyframes_were_indexed(tmp_path, monkeypatch):
    imgs = pictures(tmp_path)
    ids = [imgs["astronaut"].pk, imgs["camera"].pk]
    # A person's acquired web images were face-scanned: not the archive.
    Image.objects.filter(pk=imgs["coffee"].pk).update(faces_scanned_at=timezone.now())
    images_added.send(sender=None, image_ids=ids, category_id=None, source="import")
    assert not Job.objects.filter(kind="index_faces").exists()
    collection = imgs["coffee"].collection
    video = Video.objects.create(
        collection=collection,
        title="News",
        file="videos/news.mp4",
        sha256="2" * 64,
        fps=25,
        n_frames=10,
        duration_ms=400,
        width=64,
        height=64,
    )
    Image.objects.create(
        collection=collection,
        file="keyframes/news-0.jpg",
        sha256="3" * 64,
        width=64,
        height=64,
        video=video,
        frame=0,
        faces_scanned_at=timezone.now(),
    )
    images_added.send(sender=None, image_ids=ids, category_id=None, source="import")
    job = Job.objects.get(kind="index_faces")
    assert job.params == {"image_ids": sorted(ids)}
    # A big import: its collections instead of every id.
    monkeypatch.setattr(training_apps, "MAX_IMAGE_IDS", 1)
    images_added.send(sender=None, image_ids=ids, category_id=None, source="import")
    big = Job.objects.filter(kind="index_faces").latest("pk")
    assert big.params == {"collection_ids": [collection.pk]}


@pytest.mark.django_db
def test_face_query_never_downloads_weights_in_the_request(settings, tmp_path, monkeypatch):
    from retrieval.face_search.query import FaceQueryError, analyse

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    settings.VIVA_WEIGHTS_DIR = tmp_path / "weights"
    settings.VIVA_FACE_ALLOW_RANDOM_WEIGHTS = False
    settings.VIVA_ALLOW_WEIGHT_DOWNLOAD = True

    def no_download(url, dest):
        raise AssertionError("downloaded inside a web request")

    monkeypatch.setattr(embed_mod, "_download", no_download)
    with pytest.raises(FaceQueryError) as info:
        analyse(PILImage.fromarray(data.astronaut()))
    assert embed_mod.WEIGHTS_FILE in str(info.value) and "VIVA_WEIGHTS_DIR" in str(info.value)
