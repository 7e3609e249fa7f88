"""The face pipeline on real, offline pictures (issue 7): MTCNN finds the faces of
``skimage.data.astronaut()`` and ``camera()``; alignment makes upright 160×160 crops with
level eyes; quality filters reject with reasons; bad input gets clear messages;
embeddings are 512-d unit vectors; weights resolve locally first and never silently
fall back to random ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from training.faces import embed as embed_mod
from training.faces.align import (
    CROP_SIZE,
    TEMPLATE,
    align_face,
    similarity_matrix,
    transform_points,
)
from training.faces.detect import detect_batch
from training.faces.pipeline import (
    FaceModelUnavailable,
    analyse_image,
    describe_results,
    image_problem,
)
from training.faces.quality import Thresholds, assess, sharpness

# The astronaut's face in skimage's 512×512 picture (checked by eye) and the camera man's.
ASTRONAUT_FACE = (175, 55, 275, 180)
CAMERA_FACE = (190, 110, 265, 200)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def inside(box, region, slack=10) -> bool:
    x1, y1, x2, y2 = box
    r1, s1, r2, s2 = region
    return x1 >= r1 - slack and y1 >= s1 - slack and x2 <= r2 + slack and y2 <= s2 + slack


def test_finds_the_astronaut():
    results = analyse_image(astronaut())
    assert len(results) == 1
    face = results[0]
    assert face.ok and face.reason == "" and face.score > 0.99 and 0.5 < face.quality <= 1
    assert inside(face.box, ASTRONAUT_FACE)
    assert len(face.landmarks) == 5 and all(len(p) == 2 for p in face.landmarks)
    assert face.crop.size == (CROP_SIZE, CROP_SIZE)
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    assert describe_results(results) == "One usable face was found."


def test_finds_the_camera_man_in_a_grey_picture():
    grey = Image.fromarray(data.camera())
    assert grey.mode == "L"
    results = analyse_image(grey)  # converted to RGB inside: MTCNN needs three channels
    assert len(results) == 1 and results[0].ok
    assert inside(results[0].box, CAMERA_FACE)


def test_no_face_and_many_faces():
    assert analyse_image(Image.fromarray(data.coffee())) == []
    assert describe_results([]) == "No face was found in this image."
    tile = np.tile(data.astronaut(), (2, 2, 1))  # four astronauts, 1024×1024
    results = analyse_image(Image.fromarray(tile), embed=False)
    assert len(results) == 4 and all(r.ok for r in results)
    assert all(r.embedding is None for r in results)
    corners = sorted((round(r.box[0] / 512), round(r.box[1] / 512)) for r in results)
    assert corners == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert describe_results(results).startswith("4 usable faces")


def test_tiny_and_huge_images():
    tiny = Image.fromarray(data.astronaut()).resize((32, 32))
    assert analyse_image(tiny) == []
    assert "too small" in image_problem(32, 32)
    assert image_problem(512, 512) == ""
    assert "too large" in image_problem(20_000, 20_000)
    # A 4096×3072 frame is detected at 1280 pixels; the box comes back in its pixels.
    canvas = Image.new("RGB", (4096, 3072), (90, 110, 100))
    canvas.paste(astronaut(), (2000, 1500))
    results = analyse_image(canvas, embed=False)
    assert len(results) == 1 and results[0].ok
    shifted = tuple(v + d for v, d in zip(ASTRONAUT_FACE, (2000, 1500) * 2, strict=True))
    assert inside(results[0].box, shifted, slack=20)


def test_alignment_puts_the_eyes_level_and_upright():
    rotated = astronaut().rotate(25, resample=Image.BICUBIC, center=(225, 120), fillcolor=(0,) * 3)
    array = np.asarray(rotated)
    [[found]] = detect_batch([array])
    eyes = found.landmarks[:2]
    assert abs(eyes[0][1] - eyes[1][1]) > 10  # tilted in the input
    crop = align_face(array, found.landmarks)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    mapped = transform_points(similarity_matrix(found.landmarks), found.landmarks)
    assert np.abs(mapped - TEMPLATE).max() < 8
    # Detected again in the aligned crop, the face is upright: eyes level, left of right,
    # above the nose, the nose above the mouth.
    [[again]] = detect_batch([np.ascontiguousarray(crop)])
    le, re, nose, ml, mr = again.landmarks
    assert abs(le[1] - re[1]) < 4 and le[0] < re[0]
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])
    corners = [0, 1, 3, 4]  # eyes and mouth corners (MTCNN's nose point wanders more)
    assert np.abs(again.landmarks[corners] - TEMPLATE[corners]).max() < 8


def test_box_fallback_without_landmarks():
    crop = align_face(data.astronaut(), None, box=ASTRONAUT_FACE)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    with pytest.raises(ValueError):
        align_face(data.astronaut(), None)


def test_quality_filters(settings):
    limits = Thresholds(min_score=0.9, min_size=40, min_sharpness=15, max_aspect=2.0)
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)
    flat = np.full((160, 160, 3), 128, dtype=np.uint8)
    assert sharpness(flat) == 0 and sharpness(sharp) > 1000
    q, reason = assess((0, 0, 100, 120), 0.999, sharp, limits)
    assert reason == "" and q == pytest.approx(1.0, abs=0.01)
    assert "blurred" in assess((0, 0, 100, 120), 0.999, flat, limits)[1]
    assert "too small" in assess((0, 0, 30, 35), 0.999, sharp, limits)[1]
    assert "not sure" in assess((0, 0, 100, 120), 0.8, sharp, limits)[1]
    assert "narrow or too flat" in assess((0, 0, 100, 45), 0.999, sharp, limits)[1]
    small_q, _ = assess((0, 0, 50, 60), 0.999, sharp, limits)
    assert small_q < q  # smaller faces rank lower

    # The settings drive analyse_image: the astronaut's 87-pixel face is too small at 120.
    settings.VIVA_FACE_MIN_SIZE = 120
    [face] = analyse_image(astronaut())
    assert not face.ok and "too small" in face.reason and face.embedding is None
    assert describe_results([face]).startswith("A face was found, but it cannot be used")
    settings.VIVA_FACE_MIN_SIZE = 40
    blurred = Image.fromarray(data.astronaut()).resize((128, 128)).resize((512, 512))
    settings.VIVA_FACE_MIN_SHARPNESS = 400
    results = analyse_image(blurred)
    assert results and not results[0].ok and "blurred" in results[0].reason


def test_random_embeddings_are_the_same_in_every_process():
    crops = np.stack([np.asarray(analyse_image(astronaut(), embed=False)[0].crop)] * 2)
    a = embed_mod.Embedder("cpu").embed(crops)
    b = embed_mod.Embedder("cpu").embed(crops)
    assert a.shape == (2, 512) and np.allclose(a, b, atol=1e-5)


def test_weights_resolution(settings, tmp_path, monkeypatch):
    from facenet_pytorch import InceptionResnetV1

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    settings.VIVA_WEIGHTS_DIR = tmp_path / "weights"
    settings.VIVA_ALLOW_WEIGHT_DOWNLOAD = False
    settings.VIVA_FACE_ALLOW_RANDOM_WEIGHTS = False
    assert embed_mod.embedder_source() == "missing"
    with pytest.raises(FaceModelUnavailable) as info:
        embed_mod.resolve()
    message = str(info.value)
    assert embed_mod.WEIGHTS_FILE in message and str(tmp_path / "weights" / "facenet") in message
    with pytest.raises(FaceModelUnavailable):
        analyse_image(astronaut())
    assert analyse_image(astronaut(), embed=False)[0].ok  # detection needs no weights

    settings.VIVA_FACE_ALLOW_RANDOM_WEIGHTS = True
    assert embed_mod.embedder_source() == "random"
    assert embed_mod.resolve() == ("random", None)

    # A released-style file (with the VGGFace2 classifier) in facenet-pytorch's cache …
    torch.manual_seed(1)
    released = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631)
    cache = tmp_path / "torch" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(released.state_dict(), cache / embed_mod.WEIGHTS_FILE)
    assert embed_mod.embedder_source() == "vggface2"
    embedder = embed_mod.Embedder("cpu")
    assert embedder.source == "vggface2"
    assert torch.equal(embedder.model.last_linear.weight, released.last_linear.weight)
    # … and VIVA_WEIGHTS_DIR comes first.
    (tmp_path / "weights" / "facenet").mkdir(parents=True)
    first = tmp_path / "weights" / "facenet" / embed_mod.WEIGHTS_FILE
    first.write_bytes(b"not a checkpoint")
    assert embed_mod.local_weights() == first
    with pytest.raises(FaceModelUnavailable, match="cannot be read safely"):
        embed_mod.Embedder("cpu")
