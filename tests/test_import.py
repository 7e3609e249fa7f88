"""Importing videos and still images: shots, keyframes, files, idempotency, bad input, upload.

Every test gets its own MEDIA_ROOT under tmp_path, so "nothing half-imported" can be checked
by looking at the whole media tree. Jobs run in-process with ``run_job`` (no worker).
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image as PILImage

from viva.ingest.importer import ImportFailed, import_image, import_video
from viva.ingest.synth import SceneSpec, make_synthetic_video
from viva.jobs import run_job
from viva.media import media_path
from viva.models import Collection, Image, Job, Shot, Video

FPS = 25
# Shots of 40, 8, 25 and 30 frames joined by hard cuts: the 8-frame shot is short but above
# the detector's minimum shot length; it still gets 5 keyframes (one per 1.6 frames).
SCENES = [
    SceneSpec(variant=0, n_frames=40, pan=(0.05, 0.0)),
    SceneSpec(variant=7, n_frames=8),
    SceneSpec(variant=20, n_frames=25, zoom=(1.0, 1.1)),
    SceneSpec(variant=33, n_frames=30, monochrome=True),
]


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    settings.VAR_DIR = tmp_path / "var"  # uploads land in VAR_DIR/uploads
    return root


@pytest.fixture(autouse=True)
def _no_enqueue():
    with mock.patch("viva.tasks.run_job_task.apply_async") as sent:
        yield sent


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """One small synthetic video with known cuts, shared by the module (read-only)."""
    path = tmp_path_factory.mktemp("videos") / "harbour_1968.mp4"
    truth = make_synthetic_video(path, SCENES, fps=FPS, size=(160, 96), seed=11)
    return path, truth


@pytest.fixture
def collection(db) -> Collection:
    return Collection.objects.create(name="Test archive")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def assert_nothing_imported(root: Path) -> None:
    assert not Video.objects.exists()
    assert not Shot.objects.exists()
    assert not Image.objects.exists()
    assert files_under(root) == []


# --- videos ---
def test_import_video_shots_keyframes_and_files(collection, synthetic, media_root):
    path, truth = synthetic
    assert truth.hard_cuts == [40, 48, 73]
    status, video = import_video(path, collection)
    assert status == "imported"
    assert video.title == "harbour 1968" and video.year == 1968
    assert video.fps == pytest.approx(FPS) and video.n_frames == truth.n_frames
    assert (video.width, video.height) == (160, 96)
    assert video.duration_ms == pytest.approx(truth.n_frames * 1000 / FPS, abs=40)
    assert media_path(video.file).read_bytes() == path.read_bytes()

    shots = list(video.shots.order_by("number"))
    assert len(shots) == len(truth.shots)
    for shot, (start, end) in zip(shots, truth.shots, strict=True):
        assert abs(shot.start_frame - start) <= 1, (shot, start)
        assert abs(shot.end_frame - end) <= 1, (shot, end)
        assert shot.start_ms == video.frame_to_ms(shot.start_frame)
        assert shot.end_ms == video.frame_to_ms(shot.end_frame + 1)
    # Shots tile the video without gaps or overlaps.
    assert shots[0].start_frame == 0 and shots[-1].end_frame == truth.n_frames - 1
    for a, b in zip(shots, shots[1:], strict=False):
        assert b.start_frame == a.end_frame + 1

    for shot in shots:
        frames = sorted(shot.keyframes.values_list("frame", flat=True))
        length = shot.end_frame - shot.start_frame + 1
        assert len(frames) == min(5, length), (shot, frames)
        assert all(shot.start_frame <= f <= shot.end_frame for f in frames)
        # Evenly spread: the centres of equal segments, so gaps differ by at most a frame and
        # the margins at both ends are about half a gap.
        gaps = [b - a for a, b in zip(frames, frames[1:], strict=False)]
        assert max(gaps) - min(gaps) <= 1, (shot, frames)
        segment = length / len(frames)
        assert abs((frames[0] - shot.start_frame) - segment / 2) <= 1
        assert abs((shot.end_frame - frames[-1]) - segment / 2) <= 1.5

    keyframes = list(video.keyframes.all())
    assert len(keyframes) == 5 * len(shots)
    for image in keyframes:
        assert image.collection == collection and image.shot.video_id == video.pk
        assert image.time_ms == round(image.frame * 1000 / FPS)
        assert (image.width, image.height) == (160, 96)
        with PILImage.open(media_path(image.file)) as picture:
            assert picture.size == (160, 96)
        with PILImage.open(media_path(image.thumbnail)) as thumb:
            assert max(thumb.size) <= 256
        assert len(image.sha256) == 64
    # Nothing else lies around: the video, and two files per keyframe.
    assert len(files_under(media_root)) == 1 + 2 * len(keyframes)
    assert not list(media_root.rglob("*.part"))


def test_reimport_is_skipped_without_duplicates(collection, synthetic, media_root):
    path, _ = synthetic
    _, first = import_video(path, collection)
    counts = (Video.objects.count(), Shot.objects.count(), Image.objects.count())
    n_files = len(files_under(media_root))
    copy = media_root.parent / "renamed copy.mp4"
    shutil.copyfile(path, copy)
    for again in (path, copy):
        status, video = import_video(again, Collection.objects.create(name=f"other {again.name}"))
        assert status == "skipped" and video.pk == first.pk
    assert (Video.objects.count(), Shot.objects.count(), Image.objects.count()) == counts
    assert len(files_under(media_root)) == n_files


def _garbled(src: Path, dst: Path) -> Path:
    """Keep the container header and index, zero the coded frames: no frame decodes."""
    data = bytearray(src.read_bytes())
    moov = data.find(b"moov") - 4
    assert moov > 100, "expected the index after the frames (x264 in mp4 without faststart)"
    data[48 : moov - 8] = bytes(moov - 8 - 48)
    dst.write_bytes(data)
    return dst


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("random bytes", "not a readable video"),
        ("text renamed .mp4", "not a readable video"),
        ("empty", "empty"),
        ("truncated", "not a readable video"),
        ("no decodable frames", "no decodable frames"),
    ],
)
def test_bad_video_fails_cleanly(collection, synthetic, media_root, tmp_path, kind, message):
    path, _ = synthetic
    bad = tmp_path / "bad.mp4"
    if kind == "random bytes":
        bad.write_bytes(os.urandom(20_000))
    elif kind == "text renamed .mp4":
        bad.write_text("This is not a video, just notes.\n" * 50)
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        _garbled(path, bad)
    with pytest.raises(ImportFailed) as failed:
        import_video(bad, collection)
    assert message in str(failed.value)
    assert "bad.mp4" in str(failed.value)  # the user learns which file
    assert "Traceback" not in str(failed.value)
    assert_nothing_imported(media_root)


def test_failure_midway_leaves_nothing_behind(collection, synthetic, media_root):
    """A crash after some keyframes were written (disk full) removes every file again."""
    path, _ = synthetic
    from viva.ingest import importer

    real = importer.write_thumbnail
    calls = {"n": 0}

    def flaky(picture, rel):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(28, "No space left on device")
        return real(picture, rel)

    with mock.patch.object(importer, "write_thumbnail", flaky), pytest.raises(OSError):
        import_video(path, collection)
    assert calls["n"] == 4
    assert_nothing_imported(media_root)
    # and the file imports fine afterwards
    assert import_video(path, collection)[0] == "imported"


def test_database_failure_leaves_no_files(collection, synthetic, media_root):
    path, _ = synthetic
    with mock.patch.object(Image.objects, "bulk_create", side_effect=RuntimeError("db gone")):
        with pytest.raises(RuntimeError):
            import_video(path, collection)
    assert_nothing_imported(media_root)


def test_video_job_reports_per_file_errors(collection, synthetic, media_root, tmp_path):
    path, truth = synthetic
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    job = Job.objects.create(
        kind="import_videos",
        params={
            "collection_id": collection.pk,
            "paths": [str(path), str(notes), str(tmp_path / "missing.mp4")],
        },
    )
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert [e["file"] for e in job.result["imported"]] == [path.name]
    errors = {e["file"]: e["error"] for e in job.result["errors"]}
    assert set(errors) == {"notes.mp4", "missing.mp4"}
    assert "not a readable video" in errors["notes.mp4"]
    assert "does not exist" in errors["missing.mp4"]
    assert job.result["summary"] == "1 imported, 0 already in the archive, 2 failed"
    assert (job.progress, job.total) == (3000, 3000)
    assert Video.objects.count() == 1 and Shot.objects.count() == len(truth.shots)

    again = Job.objects.create(
        kind="import_videos", params={"collection_id": collection.pk, "paths": [str(path)]}
    )
    assert run_job(again.pk) == "succeeded"
    again.refresh_from_db()
    assert len(again.result["skipped"]) == 1 and Video.objects.count() == 1


def test_video_job_with_only_bad_files_fails(collection, media_root, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    job = Job.objects.create(
        kind="import_videos", params={"collection_id": collection.pk, "paths": [str(bad)]}
    )
    assert run_job(job.pk) == "failed"
    job.refresh_from_db()
    assert job.error.startswith("Nothing could be imported.")
    assert "broken.mp4" in job.error
    assert_nothing_imported(media_root)


def test_job_for_a_deleted_collection_fails_readably(db, media_root):
    job = Job.objects.create(kind="import_videos", params={"collection_id": 999, "paths": []})
    assert run_job(job.pk) == "failed"
    assert Job.objects.get(pk=job.pk).error == "The target collection no longer exists."


# --- still images ---
def png_bomb(path: Path, width: int, height: int) -> Path:
    """A tiny PNG that claims a huge canvas (a decompression bomb)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * (1 + (width + 7) // 8), 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


def jpeg_bytes(seed: int, size=(64, 48)) -> bytes:
    import numpy as np

    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(array).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "stills"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(jpeg_bytes(1))
    (folder / "sub" / "b.jpg").write_bytes(jpeg_bytes(2, (80, 60)))
    PILImage.new("RGB", (30, 20), "orange").save(folder / "c.png")
    (folder / "a copy.jpg").write_bytes(jpeg_bytes(1))  # same bytes as a.jpg
    (folder / "broken.jpg").write_bytes(os.urandom(3000))
    whole = jpeg_bytes(3, (200, 150))
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    png_bomb(folder / "bomb.png", 30_000, 30_000)
    png_bomb(folder / "large.png", 10_000, 8_500)  # below Pillow's limit, above ours
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    return folder


def test_image_folder_job(collection, image_folder, media_root):
    job = Job.objects.create(
        kind="import_images", params={"collection_id": collection.pk, "paths": [str(image_folder)]}
    )
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    result = job.result
    # "a copy.jpg" sorts first, so it is the one imported and "a.jpg" the duplicate.
    assert sorted(e["file"] for e in result["imported"]) == ["a copy.jpg", "b.jpg", "c.png"]
    assert [e["file"] for e in result["skipped"]] == ["a.jpg"]
    errors = {e["file"]: e["error"] for e in result["errors"]}
    assert set(errors) == {"broken.jpg", "truncated.jpg", "bomb.png", "large.png"}
    assert "Not a readable image" in errors["broken.jpg"]
    assert "damaged or truncated" in errors["truncated.jpg"]
    assert "decompression bomb" in errors["bomb.png"]
    assert "too large (10000×8500 pixels)" in errors["large.png"]
    assert (job.progress, job.total) == (8, 8)

    images = list(Image.objects.all())
    assert len(images) == 3  # the duplicate is one Image
    by_name = {i.original_name: i for i in images}
    assert result["skipped"][0]["image_id"] == by_name["a copy.jpg"].pk
    assert (by_name["b.jpg"].width, by_name["b.jpg"].height) == (80, 60)
    for image in images:
        assert image.collection == collection and image.video is None
        assert media_path(image.file).is_file() and media_path(image.thumbnail).is_file()
    assert len(files_under(media_root)) == 6  # originals and thumbnails of the 3 good ones


def test_image_job_with_only_broken_files_fails(collection, media_root, tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"garbage")
    png_bomb(tmp_path / "y.png", 40_000, 40_000)
    job = Job.objects.create(
        kind="import_images",
        params={
            "collection_id": collection.pk,
            "paths": [str(tmp_path / "x.jpg"), str(tmp_path / "y.png")],
        },
    )
    assert run_job(job.pk) == "failed"
    error = Job.objects.get(pk=job.pk).error
    assert "Nothing could be imported" in error and "x.jpg" in error and "y.png" in error
    assert_nothing_imported(media_root)


def test_import_image_refuses_bomb_without_leaving_files(collection, media_root, tmp_path):
    with pytest.raises(ImportFailed):
        import_image(png_bomb(tmp_path / "bomb.png", 30_000, 30_000), collection)
    assert_nothing_imported(media_root)


# --- the upload page ---
def test_upload_page_shows_form(client_for):
    response = client_for("trainer").get(reverse("archive:upload"))
    assert response.status_code == 200
    assert 'enctype="multipart/form-data"' in response.content.decode()


def test_trainer_uploads_video_then_job_imports_it(
    client_for, synthetic, media_root, settings, django_capture_on_commit_callbacks
):
    path, truth = synthetic
    upload = SimpleUploadedFile("Harbour 1968.mp4", path.read_bytes(), "video/mp4")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client_for("trainer").post(
            reverse("archive:upload"), {"new_collection": "Uploads", "files": [upload]}
        )
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    assert len(callbacks) == 1  # enqueued only once the request's transaction commits
    assert job.kind == "import_videos" and job.created_by.username == "trainer"
    upload_dir = Path(job.params["cleanup_dirs"][0])
    assert upload_dir.is_dir() and upload_dir.is_relative_to(settings.VAR_DIR / "uploads")

    assert run_job(job.pk) == "succeeded"
    video = Video.objects.get()
    assert video.collection.name == "Uploads" and video.original_name == "Harbour 1968.mp4"
    assert video.year == 1968
    assert video.shots.count() == len(truth.shots)
    assert not upload_dir.exists()  # the uploaded copy is cleaned up after the import


def test_upload_of_videos_and_images_into_existing_collection(
    client_for, synthetic, collection, django_capture_on_commit_callbacks
):
    path, _ = synthetic
    files = [
        SimpleUploadedFile("clip.mp4", path.read_bytes(), "video/mp4"),
        SimpleUploadedFile("still.jpg", jpeg_bytes(5), "image/jpeg"),
    ]
    with django_capture_on_commit_callbacks(execute=False):
        response = client_for("admin").post(
            reverse("archive:upload"), {"collection": collection.pk, "files": files}
        )
    assert response.status_code == 302
    jobs = {j.kind: j for j in Job.objects.all()}
    assert set(jobs) == {"import_videos", "import_images"}
    # Both jobs go to the io queue and may run in either order (or at the same time):
    # running the image job first must not pull the video out from under the video job.
    for kind in ("import_images", "import_videos"):
        assert run_job(jobs[kind].pk) == "succeeded", Job.objects.get(pk=jobs[kind].pk).error
    assert Video.objects.get().collection == collection
    assert Image.objects.get(video__isnull=True).original_name == "still.jpg"
    assert Collection.objects.count() == 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"hello", "not a supported video or image type"),
        ("script.exe", b"MZ\x90\x00", "not a supported video or image type"),
    ],
)
def test_upload_refuses_bad_types(client_for, name, content, message):
    response = client_for("trainer").post(
        reverse("archive:upload"),
        {"new_collection": "Nope", "files": [SimpleUploadedFile(name, content)]},
    )
    assert response.status_code == 200
    assert f"{name}: {message}" in response.content.decode()
    assert not Job.objects.exists() and not Collection.objects.exists()


def test_upload_refuses_files_over_the_limit(client_for, settings):
    settings.VIVA_MAX_UPLOAD_MB = 0
    response = client_for("trainer").post(
        reverse("archive:upload"),
        {"new_collection": "Nope", "files": [SimpleUploadedFile("big.jpg", jpeg_bytes(1))]},
    )
    assert response.status_code == 200
    assert "big.jpg: larger than 0 MB" in response.content.decode()
    assert not Job.objects.exists()


def test_upload_needs_a_collection(client_for):
    response = client_for("trainer").post(
        reverse("archive:upload"), {"files": [SimpleUploadedFile("a.jpg", jpeg_bytes(1))]}
    )
    assert response.status_code == 200
    assert "Choose a collection or name a new one." in response.content.decode()
    assert not Job.objects.exists()


@pytest.mark.parametrize("role", ["researcher", "annotator"])
def test_upload_forbidden_below_trainer(client_for, role):
    client = client_for(role)
    assert client.get(reverse("archive:upload")).status_code == 403
    response = client.post(
        reverse("archive:upload"),
        {"new_collection": "Sneaky", "files": [SimpleUploadedFile("a.jpg", jpeg_bytes(1))]},
    )
    assert response.status_code == 403
    assert not Job.objects.exists() and not Collection.objects.exists()
