"""Backbone weights and pooled features of images (torch; worker side).

Weights follow the documented order of :mod:`training.weights` (``VIVA_WEIGHTS_DIR`` →
torch hub cache → download). Random initialisation happens only when it is asked for
(``init="random"``) or when ``VIVA_HASHING_ALLOW_RANDOM`` allows falling back to it (tests,
demo); codes from a random backbone are close to meaningless, so the model records it
and the "Hash codes" page warns about it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from training.dataset import Augmentation, ImageFileDataset, make_loader
from training.network_specs import get_spec
from training.preprocessing import Preprocessing
from training.weights import (
    ResolvedWeights,
    WeightsUnavailable,
    read_state_dict,
    resolve_weights,
)

from .network import PooledBackbone
from .service import random_allowed


def resolve_backbone_weights(network: str, init: str = "pretrained", log=None) -> ResolvedWeights:
    """ImageNet weights of ``network``, or random initialisation when asked for / allowed.

    Raises :class:`training.weights.WeightsUnavailable` with the administrator's advice
    when neither is possible."""
    spec = get_spec(network)
    if init == "random":
        return ResolvedWeights("random")
    if spec.pretrained is None:
        if random_allowed():
            return ResolvedWeights("random")
        raise WeightsUnavailable(
            f"The network {network} has no ImageNet weights; it can only start from random "
            "initialisation, which hash codes allow only with VIVA_HASHING_ALLOW_RANDOM "
            "(tests, demo)."
        )
    try:
        return resolve_weights(network, "pretrained")
    except WeightsUnavailable as exc:
        if not random_allowed():
            raise
        if log is not None:
            log(
                f"WARNING: {exc} Falling back to a randomly initialised backbone because "
                "VIVA_HASHING_ALLOW_RANDOM is set: the codes will be close to meaningless."
            )
        return ResolvedWeights("random")


def load_backbone_weights(features: PooledBackbone, resolved: ResolvedWeights) -> None:
    """Copy ImageNet weights into the backbone (without the ImageNet classifier)."""
    if resolved.source == "random":
        return
    state = {k: v for k, v in read_state_dict(resolved.path).items() if not k.startswith("_fc.")}
    target = getattr(features.backbone, "net", features.backbone)
    result = target.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsUnavailable(
            f"The weights file {resolved.path} does not fit {resolved.name}: "
            f"{len(result.missing_keys)} missing and {len(result.unexpected_keys)} "
            "unexpected tensors."
        )


def image_loader(
    files: Sequence[str],
    pre: Preprocessing,
    *,
    batch_size: int,
    num_workers: int = 0,
    root: str | Path | None = None,
    augment: bool = False,
    targets: np.ndarray | None = None,
):
    """A DataLoader of ``(uint8 images, targets, indices, failed)`` batches that skips
    unreadable files (they come back in ``batch.failed``)."""
    targets = np.zeros(len(files), dtype=np.int8) if targets is None else targets
    dataset = ImageFileDataset(
        list(files),
        targets,
        pre,
        root=root,
        augmentation=Augmentation() if augment else None,
    )
    return make_loader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=False
    )


@torch.no_grad()
def encode_files(
    fn: Callable[[torch.Tensor], torch.Tensor],
    files: Sequence[str],
    pre: Preprocessing,
    device: torch.device,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    root: str | Path | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``fn`` (images → ``(n, d)``) to image files. Returns ``(values (n, d)
    float32, ok (n,) bool)``; rows of unreadable files are zeros with ``ok`` False."""
    out: np.ndarray | None = None
    ok = np.zeros(len(files), dtype=bool)
    loader = image_loader(files, pre, batch_size=batch_size, num_workers=num_workers, root=root)
    for batch in loader:
        if len(batch):
            values = fn(batch.images.to(device)).float().cpu().numpy()
            if out is None:
                out = np.zeros((len(files), values.shape[1]), dtype=np.float32)
            idx = batch.indices.numpy()
            out[idx] = values
            ok[idx] = True
        if on_batch is not None:
            on_batch(len(batch) + len(batch.failed))
    if out is None:
        out = np.zeros((len(files), 0), dtype=np.float32)
    return out, ok
