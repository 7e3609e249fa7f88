"""Person similarity search (issue 7, item 5): the FAISS face index, the service that keeps
it up to date, the rebuild job (through a real worker), and the page with its query
sources (stored face, archive image, upload, URL) and bad input.

Faces are rows with synthetic embeddings; the detector is replaced by a stub where a
picture has to be analysed (the face pipeline has its own tests)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage

from retrieval.face_search import service
from retrieval.face_search.index import EXACT, IVF, FaceIndex, IndexSpec, ivf_cells
from tests.conftest import wait_for
from tests.test_grid_views import make_stills
from viva.models import Face, Job

DIM = 512


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(n_people: int, per_person: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Faces of ``n_people`` identities (cos ≈ 0.8 to their identity), shuffled."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_people, DIM)))
    labels = np.repeat(np.arange(n_people), per_person)
    rng.shuffle(labels)
    noise = rng.standard_normal((labels.size, DIM)) * 0.033
    return unit(centres[labels] + noise), labels


@pytest.fixture
def index_dir(settings, tmp_path):
    settings.VIVA_INDEX_DIR = tmp_path / "index"
    settings.VIVA_FACE_INDEX_EXACT_MAX = 1000
    service.reset_cache()
    yield settings.VIVA_INDEX_DIR / "faces"
    service.reset_cache()


# --- the index ----------------------------------------------------------------------------
def test_exact_index_add_search_remove_persist(tmp_path):
    vectors, _ = clustered(20, 10)
    ids = np.arange(100, 300)
    index = FaceIndex(tmp_path / "faces", exact_max=1000)
    assert index.count == 0 and index.search(vectors[0], 5) == []
    index.add(ids, vectors * 3.0)  # not unit length: normalised on the way in
    assert index.count == 200 and index.last_id == 299
    hits = index.search(vectors[7], 5)
    assert hits[0][0] == 107 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    exact = vectors @ vectors[7]
    assert [s for _, s in hits] == pytest.approx(sorted(exact, reverse=True)[:5], abs=1e-5)
    # Re-adding an id replaces it instead of duplicating it.
    index.add([107], -vectors[7:8])
    assert index.count == 200
    assert index.search(vectors[7], 1)[0][0] != 107
    assert index.remove([107, 108, 99999]) == 2 and index.count == 198
    index.persist()
    again = FaceIndex(tmp_path / "faces", exact_max=1000)
    assert again.count == 198 and again.last_id == 299 and again.spec.kind == EXACT
    assert again.search_batch(vectors[:2], 3)[1][0][0] == 101
    # One index file: older ones are deleted on persist.
    index.persist()
    assert len(list((tmp_path / "faces").glob("faces-*.faiss"))) == 1


def test_rebuild_switches_to_ivf_above_the_threshold_and_keeps_recall(tmp_path):
    vectors, labels = clustered(150, 20, seed=1)
    ids = np.arange(1, len(vectors) + 1)
    index = FaceIndex(tmp_path / "faces", exact_max=500)
    batches = [(ids[s : s + 700], vectors[s : s + 700]) for s in range(0, len(ids), 700)]
    seen = []
    built = index.rebuild(iter(batches), total=len(ids), progress=lambda d, t: seen.append(d))
    assert index.spec.kind == IVF and index.spec.nlist == ivf_cells(len(ids))
    assert built["count"] == len(ids) and seen[-1] == len(ids)
    assert index.stats()["rebuild_advised"] is False
    flat = vectors @ vectors[:50].T
    recalls = []
    for q in range(50):
        truth = set(ids[np.argsort(-flat[:, q])[:20]])
        got = {i for i, _ in index.search(vectors[q], 20)}
        recalls.append(len(truth & got) / 20)
    assert np.mean(recalls) >= 0.9
    # Persisted and reloaded as IVF; incremental adds keep working without retraining.
    reloaded = FaceIndex(tmp_path / "faces", exact_max=500)
    assert reloaded.spec.kind == IVF and reloaded.count == len(ids)
    reloaded.add([10_000], vectors[:1])
    assert reloaded.search(vectors[0], 2)[0][0] in (1, 10_000)
    # Shrinking below the threshold: the status advises a rebuild, which goes exact.
    small = FaceIndex(tmp_path / "faces", exact_max=5000)
    assert small.stats()["rebuild_advised"] is True
    small.rebuild(iter([(ids[:100], vectors[:100])]), total=100)
    assert small.spec.kind == EXACT and small.count == 100


def test_index_spec_for_size():
    assert IndexSpec.for_size(100, 1000).kind == EXACT
    big = IndexSpec.for_size(1_000_000, 100_000)
    assert big.kind == IVF and big.nlist == 2048 and 0 < big.nprobe <= big.nlist
    assert big.factory == "IVF2048,SQ8"


# --- the service -------------------------------------------------------------------------
def make_faces(vectors: np.ndarray, images, **extra) -> list[Face]:
    faces = [
        Face(
            image=images[i % len(images)],
            box=[10, 10, 60, 60],
            score=0.99,
            quality=0.9,
            thumbnail="",
            embedding=Face.pack_embedding(v),
            embedder="random",
            **extra,
        )
        for i, v in enumerate(vectors)
    ]
    return Face.objects.bulk_create(faces)


@pytest.fixture
def stills(db, tmp_path):
    return make_stills(3, tmp_path / "stills")


def test_similar_faces_stays_current(index_dir, stills):
    vectors, labels = clustered(10, 6, seed=2)
    faces = make_faces(vectors, stills)
    query = vectors[0]
    hits = service.similar_faces(query, 6, exclude_face_ids=[faces[0].pk])
    assert faces[0].pk not in {i for i, _ in hits} and len(hits) == 6
    # The nearest faces are the same person's, with exact cosines from the stored vectors.
    same = {f.pk for f, lab in zip(faces, labels, strict=True) if lab == labels[0]}
    assert {i for i, _ in hits[:5]} == same - {faces[0].pk}
    stored = Face.unpack_embeddings([Face.objects.get(pk=hits[0][0]).embedding])[0]
    assert hits[0][1] == pytest.approx(float(stored @ query / np.linalg.norm(stored)), abs=1e-4)
    # New faces are added before the next search; deleted ones disappear from results.
    newcomer = make_faces(vectors[:1] * 0.999 + 0.001, stills)[0]
    assert service.similar_faces(query, 1)[0][0] in (faces[0].pk, newcomer.pk)
    assert service.face_index().count == len(faces) + 1
    Face.objects.filter(pk__in=[faces[0].pk, newcomer.pk]).delete()
    top = service.similar_faces(query, 3)
    assert {i for i, _ in top} <= same and faces[0].pk not in {i for i, _ in top}
    with pytest.raises(service.FaceSearchError):
        service.similar_faces(np.zeros(DIM), 3)


def test_another_process_rebuild_is_picked_up(index_dir, stills):
    vectors, _ = clustered(5, 4, seed=3)
    faces = make_faces(vectors, stills)
    index = service.face_index()
    service.sync(index)
    assert index.count == 20
    # A rebuild elsewhere (the job) writes new files; this process reloads them.
    service.rebuild_face_index()
    assert service.face_index() is index and index.count == 20
    other = FaceIndex(index_dir)
    other.remove([faces[0].pk])
    other.persist()
    assert service.face_index().count == 19


def test_a_large_backlog_waits_for_the_rebuild(index_dir, stills, monkeypatch, client_for):
    monkeypatch.setattr(service, "SYNC_LIMIT", 5)
    vectors, _ = clustered(4, 5, seed=7)
    faces = make_faces(vectors, stills)
    with pytest.raises(service.FaceSearchError, match="not been built yet"):
        service.similar_faces(vectors[0], 3)
    monkeypatch.setattr("retrieval.face_search.views.SYNC_LIMIT", 5)
    page = client_for("trainer").get(reverse("retrieval:faces"), {"face": faces[0].pk})
    assert page.status_code == 503
    assert 'data-testid="face-backlog"' in page.content.decode()
    service.rebuild_face_index()
    assert service.similar_faces(vectors[0], 1)[0][0] == faces[0].pk
    make_faces(vectors[:3], stills)  # a small backlog is added by the search itself
    service.similar_faces(vectors[0], 1)
    assert service.face_index().count == 23


def test_rebuild_is_resumable_after_an_interruption(index_dir, stills, settings, monkeypatch):
    settings.VIVA_FACE_INDEX_EXACT_MAX = 100  # 300 faces: IVF
    monkeypatch.setattr(service, "CHUNK", 40)
    monkeypatch.setattr(service, "CHECKPOINT_EVERY", 40)
    vectors, _ = clustered(30, 10, seed=4)
    make_faces(vectors, stills)
    calls = {"n": 0}

    def stop_after_four():
        calls["n"] += 1
        if calls["n"] > 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        service.rebuild_face_index(check=stop_after_four)
    assert not (index_dir / "meta.json").exists()  # the live index was not touched
    lines: list[str] = []
    stats = service.rebuild_face_index(log=lines.append)
    assert any("Continuing the checkpoint of 160 faces" in line for line in lines)
    assert stats["count"] == 300 and stats["kind"] == IVF
    assert not (index_dir / "staging").exists()
    assert service.face_index().count == 300


def test_faces_of_other_embedders_are_neither_indexed_nor_returned(
    index_dir, stills, monkeypatch, client_for
):
    vectors, _ = clustered(4, 5, seed=8)
    mine = make_faces(vectors, stills)  # "random": the current embedder in tests
    monkeypatch.setattr("training.faces.embed.embedder_source", lambda: "random")
    # The same vectors embedded by other weights: their cosines would be noise.
    others = make_faces(vectors[:3], stills)
    Face.objects.filter(pk__in=[f.pk for f in others]).update(embedder="vggface2")
    hits = service.similar_faces(vectors[0], 10)
    assert {i for i, _ in hits} <= {f.pk for f in mine}
    assert service.face_index().count == len(mine)
    with pytest.raises(service.FaceSearchError, match="not comparable"):
        service.similar_faces(vectors[0], 10, embedder="vggface2")
    page = client_for("researcher").get(reverse("retrieval:faces"), {"face": others[0].pk})
    assert page.status_code == 503 and "not comparable" in page.content.decode()
    # A rebuild takes only the current embedder's faces, and says so.
    lines: list[str] = []
    stats = service.rebuild_face_index(log=lines.append)
    assert stats["count"] == len(mine) and service.face_index().meta["embedder"] == "random"
    assert any("3 faces of other embedders are left out" in line for line in lines)
    # Without weights here, the most common embedder among the stored faces is used.
    monkeypatch.setattr("training.faces.embed.embedder_source", lambda: "missing")
    from django.core.cache import cache

    cache.delete(service.EMBEDDER_CACHE_KEY)
    assert service.index_embedder() == "random"
    # Faces are embedded by other weights now: the old index is no longer used.
    monkeypatch.setattr("training.faces.embed.embedder_source", lambda: "vggface2")
    assert service.index_status()["rebuild_advised"] is True
    with pytest.raises(service.FaceSearchError, match="not comparable"):
        service.similar_faces(vectors[0], 10)


def test_a_second_rebuild_at_the_same_time_stops_clearly(index_dir, stills):
    import fcntl

    make_faces(clustered(2, 3, seed=9)[0], stills)
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / ".rebuild.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first job, still running
        with pytest.raises(service.RebuildRunning, match="Another face index rebuild"):
            service.rebuild_face_index()
        fcntl.flock(held, fcntl.LOCK_UN)
    assert not (index_dir / "staging").exists()
    assert service.rebuild_face_index()["count"] == 6


# --- the page ------------------------------------------------------------------------------
@pytest.fixture
def archive_faces(index_dir, stills):
    vectors, labels = clustered(8, 8, seed=5)
    faces = make_faces(vectors, stills)
    for image in stills:
        image.faces_scanned_at = timezone.now()
        image.save(update_fields=["faces_scanned_at"])
    return faces, labels


def test_page_status_and_search_by_stored_face(client_for, archive_faces):
    faces, labels = archive_faces
    client = client_for("researcher")
    page = client.get(reverse("retrieval:faces"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "faces with embeddings" in text and "Rebuild the face index" not in text
    response = client.get(reverse("retrieval:faces"), {"face": faces[0].pk})
    assert response.status_code == 200
    shown = [int(i) for i in re.findall(r'data-face-id="(\d+)"', response.content.decode())]
    same = {f.pk for f, lab in zip(faces, labels, strict=True) if lab == labels[0]}
    assert faces[0].pk not in shown and set(shown[:7]) == same - {faces[0].pk}
    assert len(shown) == min(len(faces) - 1, 48)
    assert client.get(reverse("retrieval:faces"), {"face": 999999}).status_code == 404


def test_archive_image_with_several_faces_offers_a_choice(client_for, archive_faces):
    faces, _ = archive_faces
    client = client_for("researcher")
    image = faces[0].image
    response = client.get(reverse("retrieval:faces"), {"image": image.pk})
    assert response.status_code == 200
    text = response.content.decode()
    assert 'data-testid="face-choice"' in text
    assert text.count('class="face-box ok"') == image.faces.count()
    link = re.search(r'href="(/retrieve/faces/\?query=[0-9a-f]+&amp;face_no=2)"', text).group(1)
    chosen = client.get(link.replace("&amp;", "&"))
    assert chosen.status_code == 302 and "?face=" in chosen["Location"]


def test_archive_image_without_faces_offers_whole_image_search(client_for, archive_faces, tmp_path):
    client = client_for("researcher")
    blank = make_stills(1, tmp_path / "src", start=50)[0]
    blank.faces_scanned_at = timezone.now()
    blank.save(update_fields=["faces_scanned_at"])
    response = client.get(reverse("retrieval:faces"), {"image": blank.pk})
    text = response.content.decode()
    assert "No face was found in this image." in text
    assert f"/retrieve/similar/?image={blank.pk}" in text


class Interrupted(Exception):
    """Stands for a cancelled or killed job."""


class StubResult:
    def __init__(self, box, vector, ok=True, reason=""):
        self.box, self.landmarks, self.score, self.quality = box, None, 0.99, 0.8
        self.ok, self.reason, self.embedding = ok, reason, vector
        self.crop = PILImage.new("RGB", (160, 160), (200, 150, 120))


def jpeg_bytes(size=(320, 240)) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, (90, 120, 200)).save(out, "JPEG")
    return out.getvalue()


def upload(client, content: bytes, name: str = "photo.jpg"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        reverse("retrieval:faces"), {"files": SimpleUploadedFile(name, content, "image/jpeg")}
    )


def test_upload_with_two_faces_then_choose_one(client_for, archive_faces, monkeypatch):
    import training.faces.pipeline as pipeline

    faces, labels = archive_faces
    target = Face.unpack_embeddings([faces[3].embedding])[0]
    results = [
        StubResult((20, 20, 90, 90), target),
        StubResult((150, 30, 210, 95), unit(np.ones((1, DIM)))[0]),
        StubResult((250, 100, 270, 118), None, ok=False, reason="too small"),
    ]
    monkeypatch.setattr(pipeline, "analyse_image", lambda pil, embed=True: results)
    client = client_for("researcher")
    response = upload(client, jpeg_bytes())
    assert response.status_code == 302
    choice = client.get(response["Location"])
    text = choice.content.decode()
    assert choice.status_code == 200 and text.count('class="face-box ok"') == 2
    assert "too small" in text and 'class="face-box bad"' in text
    token = re.search(r"query=([0-9a-f]+)", response["Location"]).group(1)
    picture = client.get(reverse("retrieval:face_query_image", kwargs={"token": token}))
    assert picture.status_code == 200 and picture["Content-Type"] == "image/jpeg"
    crop = client.get(
        reverse("retrieval:face_query_image", kwargs={"token": token}), {"face_no": 1}
    )
    assert PILImage.open(io.BytesIO(crop.content)).size == (160, 160)
    # Someone else cannot see the picture.
    other = client_for("annotator")
    assert (
        other.get(reverse("retrieval:face_query_image", kwargs={"token": token})).status_code == 404
    )
    result = client.get(response["Location"] + "&face_no=1")
    shown = [int(i) for i in re.findall(r'data-face-id="(\d+)"', result.content.decode())]
    same = {f.pk for f, lab in zip(faces, labels, strict=True) if lab == labels[3]}
    assert shown[0] == faces[3].pk and set(shown[:8]) == same


def test_unscanned_archive_image_is_analysed_on_the_fly(
    client_for, archive_faces, monkeypatch, tmp_path
):
    import training.faces.pipeline as pipeline

    faces, labels = archive_faces
    fresh = make_stills(1, tmp_path / "src", start=60)[0]
    target = Face.unpack_embeddings([faces[5].embedding])[0]
    seen = []

    def analyse(pil, embed=True):
        seen.append(pil.size)
        return [StubResult((5, 5, 40, 40), target)]

    monkeypatch.setattr(pipeline, "analyse_image", analyse)
    response = client_for("researcher").get(reverse("retrieval:faces"), {"image": fresh.pk})
    assert seen == [(fresh.width, fresh.height)] and response.status_code == 200
    shown = [int(i) for i in re.findall(r'data-face-id="(\d+)"', response.content.decode())]
    assert shown[0] == faces[5].pk
    assert not fresh.faces.exists()  # a query does not store faces


def test_upload_without_a_face_offers_the_whole_image(client_for, archive_faces, monkeypatch):
    import training.faces.pipeline as pipeline

    monkeypatch.setattr(pipeline, "analyse_image", lambda pil, embed=True: [])
    client = client_for("researcher")
    response = upload(client, jpeg_bytes(), "landscape.jpg")
    page = client.get(response["Location"])
    text = page.content.decode()
    assert page.status_code == 422
    assert "No face was found in this image." in text
    assert 'id="whole-image-form"' in text and 'action="/retrieve/similar/"' in text
    assert re.search(r'data-upload="/retrieve/faces/query/[0-9a-f]+/image/"', text)


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"this is not an image", "notes.txt", "notes.txt"),
        (jpeg_bytes((20, 16)), "tiny.jpg", "too small"),
    ],
)
def test_bad_uploads_get_clear_messages(client_for, index_dir, db, content, name, message):
    client = client_for("researcher")
    response = upload(client, content, name)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Face.objects.exists()


def test_too_large_files_and_pictures_are_refused(client_for, index_dir, db):
    client = client_for("researcher")
    big = upload(client, b"\xff\xd8" + b"0" * (21 * 2**20), "huge.jpg")
    assert big.status_code == 400 and "larger than 20 MB" in big.content.decode()
    out = io.BytesIO()
    PILImage.new("1", (8000, 7000)).save(out, "PNG")  # 56 megapixels, a few kB
    bomb = upload(client, out.getvalue(), "bomb.png")
    assert bomb.status_code == 400 and "bomb.png" in bomb.content.decode()
    assert "pixels" in bomb.content.decode()


def test_unreachable_or_private_url_is_refused(client_for, index_dir, db):
    client = client_for("researcher")
    response = client.post(reverse("retrieval:faces"), {"urls": "http://127.0.0.1:9/x.jpg"})
    assert response.status_code == 400
    assert "127.0.0.1" in response.content.decode()
    empty = client.post(reverse("retrieval:faces"), {})
    assert "Choose an image file or paste an image URL." in empty.content.decode()


def test_missing_face_model_is_explained(client_for, index_dir, db, monkeypatch):
    import training.faces.pipeline as pipeline

    def unavailable(pil, embed=True):
        raise pipeline.FaceModelUnavailable("No VGGFace2 face-recognition weights here.")

    monkeypatch.setattr(pipeline, "analyse_image", unavailable)
    response = upload(client_for("researcher"), jpeg_bytes())
    assert response.status_code == 400
    assert "No VGGFace2 face-recognition weights here." in response.content.decode()


def test_trainer_starts_a_rebuild_once(
    client_for, index_dir, db, django_capture_on_commit_callbacks
):  # noqa: E501
    client = client_for("trainer")
    with django_capture_on_commit_callbacks(execute=False):
        first = client.post(reverse("retrieval:faces_index"))
        second = client.post(reverse("retrieval:faces_index"), HTTP_ACCEPT="application/json")
    assert first.status_code == 302
    assert Job.objects.filter(kind=service.JOB_KIND).count() == 1
    assert second.json()["job"] == Job.objects.get().pk
    page = client.get(reverse("retrieval:faces")).content.decode()
    assert 'data-testid="face-index-job"' in page and "Rebuild the face index" in page


@pytest.mark.worker
@pytest.mark.slow
def test_rebuild_job_through_a_real_worker(celery_worker, users, settings, tmp_path):
    # The worker uses the default index folder (VAR_DIR/index): no override here.
    settings.VIVA_FACE_INDEX_EXACT_MAX = 100000
    service.reset_cache()
    import shutil

    shutil.rmtree(service.index_dir(), ignore_errors=True)
    stills = make_stills(2, tmp_path / "stills")
    vectors, _ = clustered(10, 5, seed=6)
    make_faces(vectors, stills)
    from viva.jobs import start_job

    job = start_job(service.JOB_KIND, {}, user=users["trainer"])
    done = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status__in=Job.FINISHED).first(), timeout=90
    )
    assert done.status == Job.Status.SUCCEEDED, done.error + celery_worker.output()
    assert done.result["count"] == 50 and done.progress == done.total == 50
    service.reset_cache()
    assert service.face_index().count == 50
    shutil.rmtree(service.index_dir(), ignore_errors=True)
    service.reset_cache()


@pytest.mark.browser
def test_browser_upload_without_face_then_whole_image(page, live_server, monkeypatch, tmp_path):
    """The upload is kept server-side; the button posts it again to the similar-images
    page (faces.js builds the file input from the kept copy)."""
    import training.faces.pipeline as pipeline
    from tests.conftest import make_user
    from tests.fixtures_browser import login, screenshot
    from viva.models.users import Role

    monkeypatch.setattr(pipeline, "analyse_image", lambda pil, embed=True: [])
    user = make_user("rhea", Role.RESEARCHER)
    login(page, live_server, user)
    page.goto(live_server.url + reverse("retrieval:faces"))
    photo = tmp_path / "landscape.jpg"
    photo.write_bytes(jpeg_bytes())
    page.set_input_files("[data-testid=face-file]", str(photo))
    page.locator("[data-testid=face-query-form] button[type=submit]").click()
    page.wait_for_selector("[data-testid=whole-image]")
    assert "No face was found in this image." in page.inner_text("[data-testid=face-problems]")
    screenshot(page, "face-search-no-face")
    page.locator("[data-testid=whole-image-button]").click()
    page.wait_for_url("**/retrieve/similar/**")
    text = page.inner_text("main")
    assert "Similar images" in text
    # The file arrived: the similar page did not complain about a missing query image.
    assert "Choose image files or paste image URLs" not in text
