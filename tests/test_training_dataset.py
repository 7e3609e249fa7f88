"""Label matrix, split (6.3.5), overview, and the image pipeline of concept training."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from django.conf import settings
from PIL import Image as PILImage

from annotation.labels import save_labels
from annotation.models import Category
from training.dataset import (
    Augmentation,
    ImageFileDataset,
    LabelMatrix,
    build_label_matrix,
    collate_skipping,
    dataset_overview,
    make_loader,
    make_split,
)
from training.label_matrix import _concept_rows, concept_label_counts
from training.losses import IGNORE, NEG, POS, WEAK
from training.preprocessing import Preprocessing
from viva.models import Collection, Image


def _images(n: int, prefix: str = "img") -> list[Image]:
    collection, _ = Collection.objects.get_or_create(name="training-test")
    return Image.objects.bulk_create(
        Image(
            collection=collection,
            file=f"{prefix}/{i}.jpg",
            sha256=f"{prefix}{i}",
            width=64,
            height=64,
        )
        for i in range(n)
    )


@pytest.fixture
def small_labels(db):
    """Three concepts; A and B have ≥ 2 positives, C only one (below the threshold)."""
    a, b, c = (Category.objects.create(name=n) for n in ("A", "B", "C"))
    Category.objects.create(name="Someone", kind=Category.Kind.PERSON)
    img = _images(8)
    save_labels(
        a,
        [
            (img[0].pk, 1),
            (img[1].pk, 1),
            (img[3].pk, -1),
            (img[4].pk, 0),
            (img[5].pk, 0),
            (img[7].pk, 1),
        ],
    )
    save_labels(b, [(img[1].pk, -1), (img[3].pk, 0), (img[5].pk, 1), (img[7].pk, 1)])
    save_labels(c, [(img[2].pk, 1), (img[6].pk, -1)])
    return {"A": a, "B": b, "C": c, "images": img}


def test_label_matrix_codes(small_labels):
    img = small_labels["images"]
    m = build_label_matrix(min_positives=2)
    assert m.concept_names == ["A", "B"]
    assert [c["name"] for c in m.class_map()] == ["A", "B"]
    rows = {int(i): tuple(t) for i, t in zip(m.image_ids, m.targets, strict=True)}
    assert rows == {
        img[0].pk: (POS, WEAK),  # positive for A, unlabelled for B
        img[1].pk: (POS, NEG),
        img[2].pk: (WEAK, WEAK),  # positive for C only (not trainable): weak for both
        img[3].pk: (NEG, IGNORE),  # neutral for B; no positive anywhere → no weak
        img[5].pk: (IGNORE, POS),  # neutral for A
        img[7].pk: (POS, POS),
    }  # img 4 (only neutral) and img 6 (only a negative of C) carry nothing
    assert m.files[0] == "img/0.jpg"
    assert m.targets.dtype == np.int8


def test_label_matrix_threshold_and_approach_a(small_labels):
    assert build_label_matrix(min_positives=3).concept_names == ["A"]
    assert len(build_label_matrix(min_positives=10)) == 0
    only_pos = build_label_matrix(min_positives=2, positive_images_only=True)
    assert small_labels["images"][3].pk not in only_pos.image_ids.tolist()
    assert len(only_pos) == 5


def _synthetic_matrix(seed: int = 0) -> LabelMatrix:
    """Concepts with 100, 150, 200 positives (single-label images) and labelled
    negatives on other concepts' positives (so picks interact)."""
    sizes = [100, 150, 200]
    n = sum(sizes) + 60
    targets = np.full((n, 3), WEAK, dtype=np.int8)
    targets[sum(sizes) :] = IGNORE
    start = 0
    for k, size in enumerate(sizes):
        targets[start : start + size, k] = POS
        start += size
    rng = np.random.default_rng(seed)
    for k in range(3):
        others = np.flatnonzero(targets[:, k] == WEAK)
        targets[rng.choice(others, 80, replace=False), k] = NEG
    targets[sum(sizes) :, 0] = NEG  # 60 images with only a negative label
    return LabelMatrix(
        np.arange(1, n + 1, dtype=np.int64),
        [f"f{i}.jpg" for i in range(n)],
        [11, 12, 13],
        ["x", "y", "z"],
        targets,
    )


def test_split_counts_follow_the_thesis():
    m = _synthetic_matrix()
    split = make_split(m, seed=7)
    per = {c["name"]: c for c in split.per_concept(m)}
    n_neg = (m.targets == NEG).sum(0)
    # The rarest concept is drawn first and gets exactly its 30 positives.
    assert per["x"]["val_positives"] == 30
    for k, name in enumerate("xyz"):
        assert per[name]["val_positives"] >= 30
        assert per[name]["val_negatives"] >= round(0.2 * n_neg[k])
        assert per[name]["train_positives"] + per[name]["val_positives"] == (
            (m.targets[:, k] == POS).sum()
        )
    # Image-level: no image is in both sets, and the stored ids say the same.
    data = split.as_dict(m)
    assert not set(data["train_image_ids"]) & set(data["val_image_ids"])
    assert len(data["train_image_ids"]) + len(data["val_image_ids"]) == len(m)
    assert data["seed"] == 7 and data["rule"]["val_positives"] == 30


def test_split_is_reproducible_and_seeded():
    m = _synthetic_matrix()
    first = make_split(m, seed=1).val_mask
    assert np.array_equal(first, make_split(_synthetic_matrix(), seed=1).val_mask)
    assert not np.array_equal(first, make_split(m, seed=2).val_mask)


def test_split_caps_positives_for_small_concepts():
    targets = np.full((40, 1), POS, dtype=np.int8)
    m = LabelMatrix(np.arange(40), ["f"] * 40, [5], ["small"], targets)
    per = make_split(m, seed=0).per_concept(m)[0]
    assert per["val_positives"] == 12  # 30 % of 40, leaving 28 to train on


def test_dataset_overview(small_labels):
    data = dataset_overview(min_positives=2)
    by_name = {c["name"]: c for c in data["concepts"]}
    assert set(by_name) == {"A", "B", "C"}  # persons are not concepts
    assert (by_name["A"]["positives"], by_name["A"]["negatives"], by_name["A"]["neutral"]) == (
        3,
        1,
        2,
    )
    assert by_name["A"]["eligible"] and by_name["B"]["eligible"]
    assert not by_name["C"]["eligible"] and by_name["C"]["train_positives"] == 0
    a = by_name["A"]
    assert a["train_positives"] + a["val_positives"] == 3
    totals = data["totals"]
    assert totals["eligible_concepts"] == 2 and totals["concepts"] == 3
    assert totals["train_images"] + totals["val_images"] == totals["images"] == 6
    assert data["min_positives"] == 2
    assert [c["positives"] for c in data["concepts"]] == sorted(
        (c["positives"] for c in data["concepts"]), reverse=True
    )


def test_overview_queries_agree_with_the_label_matrix(small_labels, django_assert_max_num_queries):
    """Counted in the database, not from the label matrix and a drawn split; images
    carrying labels of several concepts make the real split validate more than the quota
    rule says, never less."""
    assert concept_label_counts() == concept_label_counts(_concept_rows())
    with django_assert_max_num_queries(3):
        data = dataset_overview(min_positives=2)
    m = build_label_matrix(min_positives=2)
    split = make_split(m, seed=data["seed"])
    real = {c["id"]: c for c in split.per_concept(m)}
    eligible = [c for c in data["concepts"] if c["eligible"]]
    assert {c["id"] for c in eligible} == set(real)
    for c in eligible:
        r = real[c["id"]]
        for kind in ("positives", "negatives"):
            assert c[f"train_{kind}"] + c[f"val_{kind}"] == r[f"train_{kind}"] + r[f"val_{kind}"]
            assert c[f"val_{kind}"] <= r[f"val_{kind}"]
    assert data["totals"]["images"] == len(m)
    assert data["totals"]["val_images"] >= int(split.val_mask.sum())


def test_overview_is_the_split_when_images_have_one_concept_each(db):
    """Without images shared between concepts the quota rule is exactly the split."""
    sizes = {"P": (40, 10), "Q": (100, 25), "R": (3, 2), "S": (1, 4)}
    images = iter(_images(sum(p + n for p, n in sizes.values()), prefix="one"))
    for name, (pos, neg) in sizes.items():
        labels = [(next(images).pk, 1) for _ in range(pos)]
        labels += [(next(images).pk, -1) for _ in range(neg)]
        save_labels(Category.objects.create(name=name), labels)
    data = dataset_overview(min_positives=3)
    m = build_label_matrix(min_positives=3)
    split = make_split(m, seed=data["seed"])
    real = {c["name"]: c for c in split.per_concept(m)}
    keys = ("train_positives", "train_negatives", "val_positives", "val_negatives")
    by_name = {c["name"]: c for c in data["concepts"]}
    assert {name: tuple(by_name[name][k] for k in keys) for name in real} == {
        name: tuple(real[name][k] for k in keys) for name in real
    }
    assert by_name["Q"]["val_positives"] == 30 and by_name["P"]["val_positives"] == 12
    assert not by_name["S"]["eligible"] and by_name["S"]["val_negatives"] == 0
    totals = data["totals"]
    assert (totals["images"], totals["train_images"], totals["val_images"]) == (
        len(m),
        int((~split.val_mask).sum()),
        int(split.val_mask.sum()),
    )


# --- image pipeline -------------------------------------------------------------------------
@pytest.fixture
def image_files(tmp_path):
    colours = [(255, 0, 0), (0, 0, 255), (0, 160, 0)]
    files = []
    for i, colour in enumerate(colours):
        PILImage.new("RGB", (160, 90), colour).save(tmp_path / f"{i}.jpg", quality=95)
        files.append(f"{i}.jpg")
    PILImage.new("L", (50, 50), 128).save(tmp_path / "gray.png")
    files.append("gray.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files.append("broken.jpg")
    files.append("missing.jpg")
    return tmp_path, files


def test_dataset_skips_unreadable_files(image_files):
    root, files = image_files
    pre = Preprocessing(image_size=32)
    targets = np.zeros((len(files), 2), dtype=np.int8)
    ds = ImageFileDataset(files, targets, pre, root=root)
    batch = collate_skipping([ds[i] for i in range(len(ds))])
    assert batch.images.shape == (4, 3, 32, 32) and batch.images.dtype == torch.uint8
    assert batch.indices.tolist() == [0, 1, 2, 3]
    assert [i for i, _ in batch.failed] == [4, 5]
    assert all(message for _, message in batch.failed)  # the reason goes to the log
    # The inference path gives exactly what the training dataset gives without augmentation.
    assert torch.equal(batch.images[0], pre.load(root / files[0]))
    red = batch.images[0].float().mean(dim=(1, 2))
    assert red[0] > 200 and red[2] < 40
    assert torch.equal(batch.images[3][0], batch.images[3][1])  # grey → RGB


def test_augmentation_shapes_and_variety(image_files):
    root, files = image_files
    pre = Preprocessing(image_size=48)
    aug = Augmentation(jpeg_probability=1.0)
    rng = random.Random(0)
    with pre.open(root / files[0]) as img:
        outs = [aug.apply(img, pre, rng) for _ in range(4)]
    assert all(o.shape == (3, 48, 48) and o.dtype == torch.uint8 for o in outs)
    assert len({o.float().mean().item() for o in outs}) > 1  # brightness/contrast vary


def test_loader_with_worker_processes_reports_bad_files(image_files):
    root, files = image_files
    pre = Preprocessing(image_size=32)
    ds = ImageFileDataset(
        files, np.zeros((len(files), 1), np.int8), pre, root=root, augmentation=Augmentation()
    )
    loader = make_loader(ds, batch_size=3, shuffle=True, num_workers=1, seed=3)
    seen, failed = [], []
    for batch in loader:
        seen += batch.indices.tolist()
        failed += [i for i, _ in batch.failed]
    assert sorted(seen) == [0, 1, 2, 3] and sorted(failed) == [4, 5]


def test_preprocessing_round_trip():
    pre = Preprocessing(image_size=300)
    assert Preprocessing.from_dict(pre.as_dict()) == pre
    with pytest.raises(ValueError):
        Preprocessing(image_size=4)
    assert settings.MEDIA_ROOT  # the dataset reads relative paths from MEDIA_ROOT


def test_overview_without_trainable_concepts(small_labels):
    data = dataset_overview(min_positives=50)
    assert data["totals"]["eligible_concepts"] == 0 and data["totals"]["images"] == 0
    assert not any(c["eligible"] for c in data["concepts"])
    assert data["totals"]["positives"] == 6
