"""Fitting hashing models (CPU, tiny networks, random weights; no downloads): deep hashing
separates synthetic classes, ITQ codes from the archive, and the encoder that serves
both — including its refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from annotation.similarity import IndexNotBuilt, SimilarityError
from retrieval.hashing import encoder as enc
from retrieval.hashing.bits import hamming
from retrieval.hashing.sources import from_categories, from_folder
from retrieval.hashing.train import (
    ClassBalancedBatches,
    fit_itq_model,
    split_heldout,
    train_hashing_model,
)
from training.errors import TrainingError
from training.models import ModelVersion
from training.registry import active_version
from training.synthetic import SHAPES, write_shape_files
from training.trainer import NullContext

FAST_DEEP = {
    "network": "tiny-cnn",
    "init": "random",
    "image_size": 64,
    "epochs": 3,
    "batch_size": 24,
    "samples_per_class": 8,
    "steps_per_epoch": 8,
    "min_positives": 10,
    "heldout_fraction": 0.25,
    "device": "cpu",
    "augment": False,
    "cpu_threads": 1,
    "seed": 0,
}


def shape_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """An image-folder dataset: one subfolder per shape class, single-label images."""
    tmp = root / "flat"
    files = write_shape_files(tmp, per_class, size=(64, 64), seed=seed, pair_fraction=0.0)
    for path, shown in files:
        target = root / "dataset" / shown[0].replace(" ", "_")
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), target / path.name)
    return root / "dataset"


@pytest.fixture(autouse=True)
def _fresh_encoders():
    enc.clear_cache()
    yield
    enc.clear_cache()


def test_class_balanced_batches_draw_classes_uniformly():
    labels = np.array([0] * 100 + [1] * 5 + [2] * 5)
    sampler = ClassBalancedBatches(labels, batch_size=12, per_class=4, steps=300, seed=0)
    counts = np.zeros(3)
    for batch in sampler:
        assert len(batch) == 12
        present = np.unique(labels[batch])
        assert len(present) == 3  # 3 classes × 4: every anchor has positives
        counts += np.bincount(labels[batch], minlength=3)
    assert counts.min() / counts.max() > 0.9  # the big class does not dominate


def test_split_keeps_every_class_in_training():
    labels = np.array([0] * 2 + [1] * 10 + [2] * 200)
    train, held = split_heldout(labels, 0.2, 30, seed=0)
    assert not set(train) & set(held)
    assert len(train) + len(held) == len(labels)
    assert np.bincount(labels[held]).tolist() == [1, 2, 30]


def test_folder_dataset_refuses_too_few_classes(tmp_path):
    (tmp_path / "only").mkdir()
    PILImage.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(TrainingError, match="at least 2 class folders"):
        from_folder(tmp_path, 1)
    with pytest.raises(TrainingError, match="does not exist"):
        from_folder(tmp_path / "missing", 1)


@pytest.mark.slow
def test_deep_hashing_separates_synthetic_classes(db, tmp_path):
    folder = shape_folder(tmp_path, 40)
    ctx = NullContext()
    version = train_hashing_model(folder=str(folder), ctx=ctx, **FAST_DEEP)
    assert version.kind == "hashing" and version.is_active
    assert version.config["method"] == "deep" and version.config["bits"] == 256
    assert sorted(version.config["permutation"]) == list(range(256))
    assert version.weights_source["source"] == "random"
    assert [c["name"] for c in version.class_map] == sorted(n.replace(" ", "_") for n in SHAPES)
    m = version.metrics
    assert m["chance_map"] < 0.4
    # held-out mAP@100 clearly above chance (3 balanced classes: chance ≈ 1/3)
    assert version.mean_ap == pytest.approx(m["map_at_100"])
    assert version.mean_ap > m["chance_map"] + 0.3, m["history"]
    losses = ctx.metrics["train loss"]
    first = np.mean([v for _, v in losses[:6]])
    last = np.mean([v for _, v in losses[-6:]])
    assert last < first
    assert version.evaluations.count() == 3

    # the encoder reproduces the trained network: same class → closer codes
    encoder = enc.load_encoder()
    assert encoder.version.pk == version.pk
    assert enc.load_encoder() is encoder  # cached per process
    paths = sorted(folder.rglob("*.jpg"))
    codes, ok = encoder.encode_paths([*paths, tmp_path / "missing.jpg"])
    assert codes.shape == (len(paths) + 1, 32) and codes.dtype == np.uint8
    assert ok[:-1].all() and not ok[-1] and not codes[-1].any()
    labels = np.array([p.parent.name for p in paths])
    same, other = [], []
    for i in range(0, len(paths), 7):
        d = hamming(codes[: len(paths)], codes[i])
        mask = labels == labels[i]
        mask[i] = False
        same.append(d[mask].mean())
        other.append(d[labels != labels[i]].mean())
    assert np.mean(same) < np.mean(other)
    with PILImage.open(paths[0]) as img:
        assert np.array_equal(encoder.encode_images([img])[0], codes[0])


def test_deep_hashing_refuses_bad_options(db, tmp_path):
    with pytest.raises(TrainingError, match="Unknown options"):
        train_hashing_model(folder=str(tmp_path), colour="red")
    with pytest.raises(TrainingError, match="at least 2"):
        train_hashing_model(category_ids=[], **{**FAST_DEEP, "epochs": 1})


def test_itq_codes_from_the_archive_and_the_encoder(db, tmp_path, settings):
    from tests.test_grid_views import make_stills

    images = make_stills(12, tmp_path)
    ctx = NullContext()
    version = fit_itq_model(sample_size=100, ctx=ctx, network="tiny-cnn", image_size=64)
    assert version == active_version("hashing") and version.is_active
    assert version.config["method"] == "itq"
    assert sorted(version.config["permutation"]) == list(range(256))
    assert version.metrics["sample_images"] == 12
    assert version.metrics["itq_bits"] + version.metrics["random_bits"] == 256
    assert version.weights_source["source"] == "random"
    assert sorted(version.split_summary) == ["sample_size", "seed"]

    encoder = enc.load_encoder(version)
    paths = [Path(settings.MEDIA_ROOT) / im.file for im in images]
    codes, ok = encoder.encode_paths(paths)
    assert ok.all() and codes.shape == (12, 32)
    assert len({c.tobytes() for c in codes}) > 1  # not one constant code

    # A query with the very file of an indexed image gets its code (same JPEG decoding).
    big = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)
    PILImage.fromarray(noise).save(big, quality=90)
    indexed, ok = encoder.encode_paths([big])
    assert ok.all()
    assert np.array_equal(encoder.encode_bytes([big.read_bytes()])[0], indexed[0])

    # without random weights allowed, a network without ImageNet weights is refused
    settings.VIVA_HASHING_ALLOW_RANDOM = False
    with pytest.raises(TrainingError, match="VIVA_HASHING_ALLOW_RANDOM"):
        fit_itq_model(sample_size=100, network="tiny-cnn", image_size=64)


def test_itq_refuses_an_empty_archive(db):
    with pytest.raises(TrainingError, match="at least 2"):
        fit_itq_model(network="tiny-cnn", image_size=64)


def test_encoder_refuses_missing_model_and_missing_permutation(db):
    with pytest.raises(IndexNotBuilt, match="No hashing model exists yet"):
        enc.load_encoder()
    assert issubclass(enc.HashingModelMissing, IndexNotBuilt)
    bare = ModelVersion.objects.create(
        kind="hashing",
        version=1,
        directory="hashing/1",
        weights_path="hashing/1/weights.pt",
        config={"method": "itq", "bits": 256, "network": {"name": "tiny-cnn"}},
        is_active=True,
    )
    with pytest.raises(SimilarityError, match="no stored bit permutation"):
        enc.load_encoder()
    bare.config["permutation"] = list(range(255))
    bare.save()
    with pytest.raises(SimilarityError, match="unusable bit permutation"):
        enc.load_encoder(bare)
    bare.config.update(permutation=list(range(256)), bits=64)
    bare.save()
    with pytest.raises(SimilarityError, match="64-bit codes"):
        enc.load_encoder(bare)


def test_categories_give_single_label_classes(db):
    from training.synthetic import make_shapes_archive

    archive = make_shapes_archive(12, seed=2)
    pairs = sum(1 for _, shown in archive["images"] if len(shown) > 1)
    data = from_categories(None, 5)
    assert data.num_classes == 3
    assert {c["name"] for c in data.class_map} == set(SHAPES)
    assert len(data.files) == len(archive["images"]) - pairs  # multi-label images left out
    assert data.source["multi_label_images_left_out"] == pairs
    by_id = {im.pk: shown for im, shown in archive["images"]}
    for image_id, label in zip(data.image_ids, data.labels, strict=True):
        assert by_id[int(image_id)] == [data.class_map[label]["name"]]
    red = archive["categories"]["red circle"].pk
    blue = archive["categories"]["blue square"].pk
    two = from_categories([red, blue], 5)
    assert [c["id"] for c in two.class_map] == sorted([red, blue])
    with pytest.raises(TrainingError, match="Unknown categories: 99999"):
        from_categories([red, 99999], 5)
    with pytest.raises(TrainingError, match="at least 2 categories"):
        from_categories([red], 5)


class StopAfter(NullContext):
    """A job context that asks to cancel at the ``n``-th cancellation check."""

    def __init__(self, job_id: int, n: int):
        super().__init__()
        self.job_id, self.n = job_id, n

    def check_cancelled(self) -> None:
        self.n -= 1
        if self.n == 0:
            raise RuntimeError("stopped")


def test_deep_hashing_resumes_from_its_epoch_checkpoint(db, tmp_path):
    folder = shape_folder(tmp_path, 8)
    options = {**FAST_DEEP, "epochs": 2, "steps_per_epoch": 2, "min_positives": 4}
    with pytest.raises(RuntimeError, match="stopped"):
        train_hashing_model(folder=str(folder), ctx=StopAfter(4242, 1), **options)
    assert not ModelVersion.objects.exists()
    again = StopAfter(4242, 0)
    version = train_hashing_model(folder=str(folder), ctx=again, **options)
    assert any("Resuming after epoch 1" in line for line in again.lines)
    assert [h["epoch"] for h in version.metrics["history"]] == [1, 2]
    assert len(again.metrics["held-out mAP@100"]) == 1  # only epoch 2 ran again


def test_itq_reuses_feature_chunks_of_an_earlier_attempt(db, tmp_path, settings):
    from tests.test_grid_views import make_stills

    make_stills(5, tmp_path)
    options = {"sample_size": 100, "network": "tiny-cnn", "image_size": 64}
    with pytest.raises(RuntimeError, match="stopped"):
        fit_itq_model(ctx=StopAfter(4343, 1), **options)
    cache = Path(settings.VAR_DIR) / "work" / "hashing" / "job-4343"
    assert [p.name for p in cache.iterdir()] == ["features-00000000.npz"]
    version = fit_itq_model(ctx=StopAfter(4343, 0), **options)
    assert version.metrics["sample_images"] == 5
    assert not cache.exists()  # cleaned up after the save
