"""Model registry: atomic versions on disk, one active per kind, activation, comparison."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch
from django.db import IntegrityError, transaction

from annotation.models import Category
from training import registry
from training.errors import TrainingError
from training.models import Evaluation, ModelVersion
from training.networks import build_model, network_config
from training.registry import (
    activate,
    active_version,
    compare_versions,
    list_versions,
    pr_curve,
    save_version,
)
from training.scoring import concept_ap, evaluate, load_network


@pytest.fixture
def models_dir(tmp_path, settings):
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    return settings.VIVA_MODELS_DIR


@pytest.fixture
def concepts(db):
    return [Category.objects.create(name=n) for n in ("bakery", "choir")]


def _save(concepts, aps=(0.9, 0.5), **extra) -> ModelVersion:
    config = network_config("tiny-cnn", len(concepts))
    model = build_model(config)
    evaluations = [
        {
            "category_id": c.pk,
            "category_name": c.name,
            "ap": ap,
            "n_val_pos": 3,
            "n_val_neg": 4,
            "n_val_weak": 5,
            "pr_curve": {"precision": [1.0, 0.5], "recall": [0.5, 1.0]},
        }
        for c, ap in zip(concepts, aps, strict=True)
    ]
    return save_version(
        state_dict=model.state_dict(),
        config=config,
        class_map=[{"index": i, "id": c.pk, "name": c.name} for i, c in enumerate(concepts)],
        split={"seed": 1, "val_image_ids": [1, 2], "train_image_ids": [3], "concepts": []},
        metrics={"mAP": float(np.mean(aps))},
        evaluations=evaluations,
        weights_source={"source": "random"},
        val_scores={"image_ids": np.array([1, 2]), "logits": np.zeros((2, len(concepts)))},
        previous=active_version("concept"),
        **extra,
    )


def test_save_writes_all_files_and_activates(models_dir, concepts):
    v1 = _save(concepts)
    folder = models_dir / "concept" / "1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "classes.json",
        "config.json",
        "metrics.json",
        "split.json",
        "val_scores.npz",
        "weights.pt",
    ]
    assert v1.version == 1 and v1.is_active and v1.weights_path == "concept/1/weights.pt"
    assert v1.evaluations.count() == 2 and v1.mean_ap == pytest.approx(0.7)
    assert "val_image_ids" not in v1.split_summary and registry.read_split(v1)["seed"] == 1
    assert registry.read_val_scores(v1)["image_ids"].tolist() == [1, 2]
    assert not list((models_dir / "concept").glob(".incoming-*"))


def test_newest_good_version_becomes_active_and_older_can_be_reactivated(models_dir, concepts):
    v1 = _save(concepts, aps=(0.9, 0.8))
    v2 = _save(concepts, aps=(0.6, 0.5))  # worse, but newest: active (see registry docs)
    v1.refresh_from_db()
    assert v2.version == 2 and v2.is_active and not v1.is_active
    assert v2.previous == v1
    assert list(list_versions()) == [v2, v1]
    activate(v1)
    v2.refresh_from_db()
    assert active_version() == v1 and not v2.is_active
    v3 = _save(concepts, activate_it=False)
    assert active_version() == v1 and not v3.is_active


def test_one_active_per_kind_is_enforced(models_dir, concepts):
    v1, v2 = _save(concepts), _save(concepts)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=v1.pk).update(is_active=True)
    assert ModelVersion.objects.filter(kind="concept", is_active=True).get() == v2


def test_disk_full_keeps_the_previous_version_active(models_dir, concepts, monkeypatch):
    v1 = _save(concepts)

    def disk_full(state, path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(registry, "_save_weights", disk_full)
    with pytest.raises(TrainingError) as info:
        _save(concepts)
    assert "disk is full" in str(info.value) and "version 1 stays active" in str(info.value)
    assert list(ModelVersion.objects.all()) == [v1] and active_version() == v1
    assert sorted(p.name for p in (models_dir / "concept").iterdir()) == ["1"]


def test_database_error_removes_the_renamed_folder(models_dir, concepts, monkeypatch):
    v1 = _save(concepts)

    def broken(*args, **kwargs):
        raise IntegrityError("simulated")

    monkeypatch.setattr(Evaluation.objects, "bulk_create", broken)
    with pytest.raises(TrainingError):
        _save(concepts)
    assert active_version() == v1 and ModelVersion.objects.count() == 1
    assert sorted(p.name for p in (models_dir / "concept").iterdir()) == ["1"]


def test_an_orphaned_folder_is_never_reused(models_dir, concepts):
    (models_dir / "concept" / "7").mkdir(parents=True)
    assert _save(concepts).version == 8


def test_activate_refuses_a_version_without_files(models_dir, concepts):
    v1, _ = _save(concepts), _save(concepts)
    (models_dir / v1.weights_path).unlink()
    with pytest.raises(TrainingError, match="missing"):
        activate(v1.pk)


def test_comparison_with_the_previous_version(models_dir, concepts):
    _save(concepts, aps=(0.8, 0.4))
    extra = Category.objects.create(name="autumn")
    v2 = _save([*concepts, extra], aps=(0.9, 0.3, 0.7))
    data = compare_versions(v2)
    rows = {r["name"]: r for r in data["rows"]}
    assert rows["bakery"]["diff"] == pytest.approx(0.1)
    assert rows["choir"]["diff"] == pytest.approx(-0.1)
    assert rows["autumn"]["previous_ap"] is None and rows["autumn"]["diff"] is None
    assert data["mean_ap"] == pytest.approx(0.6333, abs=1e-3)
    assert data["previous_mean_ap"] == pytest.approx(0.6)
    assert data["common_concepts"] == 2 and data["mean_ap_common"] == pytest.approx(0.6)
    curve = pr_curve(rows["bakery"]["evaluation_id"])
    assert curve["category"] == "bakery" and curve["recall"] == [0.5, 1.0]
    # A deleted category leaves its evaluation rows with the name.
    concepts[0].delete()
    assert Evaluation.objects.filter(category_name="bakery", category__isnull=True).count() == 2


def test_saved_network_reloads_with_identical_outputs(models_dir, concepts):
    config = network_config("tiny-cnn", 2, image_size=32)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    x = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    version = save_version(
        state_dict=model.state_dict(),
        config=config,
        class_map=[],
        split={},
        metrics={},
        evaluations=[],
    )
    loaded, pre = load_network(version)
    assert pre.image_size == 32
    torch.testing.assert_close(loaded(x), model(x))


def test_ap_counts_weak_negatives_and_ignores_neutral():
    from sklearn.metrics import average_precision_score

    from training.losses import IGNORE, NEG, POS, WEAK

    targets = np.array([POS, NEG, WEAK, IGNORE, POS, WEAK])
    scores = np.array([0.9, 0.8, 0.95, 5.0, 0.1, 0.2])
    ap, curve = concept_ap(targets, scores)
    keep = targets != IGNORE
    assert ap == average_precision_score(targets[keep] == POS, scores[keep])
    assert len(curve["precision"]) == len(curve["recall"]) <= 101
    assert concept_ap(np.array([NEG, WEAK]), np.array([0.1, 0.2])) == (None, {})
    mean, rows = evaluate(
        np.stack([targets, np.full(6, NEG)], 1), np.stack([scores, scores], 1), [1, 2], ["a", "b"]
    )
    assert mean == ap and rows[1]["ap"] is None and rows[0]["n_val_weak"] == 2
