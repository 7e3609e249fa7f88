"""Running a concept network: batched logits over a loader, AP and PR curves, and
loading a saved version for inference (the same preprocessing as its training)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve

from .constants import NEG, POS, WEAK
from .dataset import ImageFileDataset, make_loader
from .models import ModelVersion
from .networks import ConceptNet, build_model
from .preprocessing import Preprocessing
from .weights import read_state_dict

PR_POINTS = 101


@torch.inference_mode()
def predict_loader(
    model: ConceptNet,
    loader,
    device: torch.device,
    *,
    amp: bool = False,
    on_batch: Callable[[int], None] | None = None,
    on_failed: Callable[[list[tuple[int, str]]], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every readable item: ``(indices, logits)`` sorted by dataset index."""
    model.eval()
    indices, outputs = [], []
    for batch in loader:
        if batch.failed and on_failed:
            on_failed(batch.failed)
        if len(batch):
            images = batch.images.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                logits = model(images)
            outputs.append(logits.float().cpu().numpy())
            indices.append(batch.indices.numpy())
        if on_batch:
            on_batch(len(batch))
    if not outputs:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    idx, out = np.concatenate(indices), np.concatenate(outputs)
    order = np.argsort(idx, kind="stable")
    return idx[order], out[order]


def concept_ap(targets: np.ndarray, scores: np.ndarray) -> tuple[float | None, dict]:
    """AP (eq. 6.5; scikit-learn) of one concept over its validation entries.

    Positives against labelled *and* weak negatives — the loss treats weak ones as
    negatives too (6.3.3), and without them a concept with only positive labels would
    score a meaningless AP of 1. Neutral/unknown entries are left out. Returns
    ``(None, {})`` without positives.
    """
    mask = np.isin(targets, (POS, NEG, WEAK))
    y = (targets[mask] == POS).astype(np.int8)
    s = scores[mask]
    if not y.any():
        return None, {}
    ap = float(average_precision_score(y, s))
    precision, recall, _ = precision_recall_curve(y, s)
    return ap, downsample_pr(precision, recall)


def downsample_pr(precision: np.ndarray, recall: np.ndarray, points: int = PR_POINTS) -> dict:
    """At most ``points`` points of the curve (both ends kept), rounded for JSON."""
    if len(precision) > points:
        keep = np.unique(np.linspace(0, len(precision) - 1, points).round().astype(int))
        precision, recall = precision[keep], recall[keep]
    return {
        "precision": [round(float(v), 4) for v in precision],
        "recall": [round(float(v), 4) for v in recall],
    }


def evaluate(
    targets: np.ndarray, logits: np.ndarray, concept_ids: Sequence[int], names: Sequence[str]
) -> tuple[float | None, list[dict]]:
    """Per-concept AP and mAP over the concepts with at least one validation positive."""
    rows = []
    for k, (cid, name) in enumerate(zip(concept_ids, names, strict=True)):
        t = targets[:, k]
        ap, curve = concept_ap(t, logits[:, k]) if len(t) else (None, {})
        rows.append(
            {
                "category_id": cid,
                "category_name": name,
                "ap": ap,
                "n_val_pos": int((t == POS).sum()),
                "n_val_neg": int((t == NEG).sum()),
                "n_val_weak": int((t == WEAK).sum()),
                "pr_curve": curve,
            }
        )
    aps = [r["ap"] for r in rows if r["ap"] is not None]
    return (float(np.mean(aps)) if aps else None), rows


# --- saved versions ------------------------------------------------------------------------
def load_network(
    version: ModelVersion, device: str | torch.device = "cpu"
) -> tuple[ConceptNet, Preprocessing]:
    """The network of a saved version in eval mode, with its preprocessing."""
    from .registry import models_root

    model = build_model(version.config)
    model.load_state_dict(read_state_dict(models_root() / version.weights_path))
    model.to(device).eval()
    return model, Preprocessing.from_dict(version.config["preprocessing"])


def score_files(
    model: ConceptNet,
    preprocessing: Preprocessing,
    files: Sequence[str | Path],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    root: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits for image files (relative to ``root``, default MEDIA_ROOT): returns
    ``(indices into files that were readable, logits)``."""
    dummy = np.zeros((len(files), model.head[-1].out_features), dtype=np.int8)
    dataset = ImageFileDataset([str(f) for f in files], dummy, preprocessing, root=root)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return predict_loader(model, loader, torch.device(device))
