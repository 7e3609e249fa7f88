"""The hashing networks (torch; imported by the worker and lazily by the encoder).

Both take 0–255 images (uint8 or float, NCHW) like :class:`training.networks.ConceptNet`
— the normalisation of the config's preprocessing is part of the network — and return
real-valued 256-d outputs whose signs are the bits.

* :class:`DeepHashNet` (thesis 4.2.3): backbone → global average pooling → a 256-unit
  coding layer with tanh → the class layer. Training uses both outputs (classification
  + batch-hard triplet loss on the codes); encoding uses only the codes.
* :class:`ItqHashNet`: backbone → pooling → ``(x − mean) · W`` with the PCA/ITQ matrix
  of :mod:`retrieval.hashing.itq` stored as buffers, so one ``weights.pt`` holds the
  whole encoder (a randomly initialised backbone, too, is reproduced exactly).

A model version's config::

    {"method": "deep" | "itq", "bits": 256,
     "network": {"name": "efficientnet-b3", "num_classes": K, "feature_dim": 1536},
     "preprocessing": {...}, "permutation": [256 ints], ...}
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.network_specs import get_spec
from training.preprocessing import Preprocessing

from ..search.base import CODE_BITS

METHODS = ("deep", "itq")


class PooledBackbone(nn.Module):
    """Normalise → backbone → global average pooling: the "pooled features"."""

    def __init__(self, backbone: nn.Module, channels: int, preprocessing: Preprocessing):
        super().__init__()
        self.backbone = backbone
        self.channels = channels
        mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(preprocessing.std).view(1, 3, 1, 1) * 255.0
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.pixel_mean) / self.pixel_std
        return torch.flatten(self.pool(self.backbone(x)), 1)


def build_pooled_backbone(network: str, preprocessing: Preprocessing) -> PooledBackbone:
    backbone, channels = get_spec(network).build_backbone(preprocessing.image_size)
    return PooledBackbone(backbone, channels, preprocessing)


class DeepHashNet(nn.Module):
    """Backbone + 256-unit tanh coding layer + class layer; ``forward`` → (codes, logits)."""

    def __init__(self, features: PooledBackbone, num_classes: int, bits: int = CODE_BITS):
        super().__init__()
        self.features = features
        self.coding = nn.Linear(features.channels, bits)
        self.classifier = nn.Linear(bits, max(1, num_classes))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = torch.tanh(self.coding(self.features(images)))
        return codes, self.classifier(codes)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.coding(self.features(images)))


class ItqHashNet(nn.Module):
    """Backbone + fixed PCA/ITQ projection; ``encode`` → real values, bits = sign."""

    def __init__(self, features: PooledBackbone, bits: int = CODE_BITS):
        super().__init__()
        self.features = features
        self.register_buffer("itq_mean", torch.zeros(features.channels))
        self.register_buffer("itq_projection", torch.zeros(features.channels, bits))

    def set_projection(self, mean: np.ndarray, projection: np.ndarray) -> None:
        self.itq_mean.copy_(torch.from_numpy(np.asarray(mean, dtype=np.float32)))
        self.itq_projection.copy_(torch.from_numpy(np.asarray(projection, dtype=np.float32)))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return (self.features(images) - self.itq_mean) @ self.itq_projection


def hashing_config(
    method: str,
    network: str,
    *,
    image_size: int | None = None,
    num_classes: int = 0,
    feature_dim: int | None = None,
) -> dict:
    """A version's config without the permutation (added once the codes exist)."""
    if method not in METHODS:
        raise ValueError(f"unknown hashing method {method!r}")
    spec = get_spec(network)
    size = int(image_size or spec.default_image_size)
    return {
        "method": method,
        "bits": CODE_BITS,
        "network": {
            "name": network,
            "num_classes": int(num_classes),
            **({"feature_dim": int(feature_dim)} if feature_dim else {}),
        },
        "preprocessing": Preprocessing(image_size=size).as_dict(),
    }


def build_hash_model(config: dict) -> DeepHashNet | ItqHashNet:
    """The network a hashing config describes (fresh weights; load the state dict after)."""
    pre = Preprocessing.from_dict(config["preprocessing"])
    features = build_pooled_backbone(config["network"]["name"], pre)
    bits = int(config.get("bits", CODE_BITS))
    if config.get("method") == "deep":
        return DeepHashNet(features, int(config["network"].get("num_classes", 0)), bits)
    if config.get("method") == "itq":
        return ItqHashNet(features, bits)
    raise ValueError(f"unknown hashing method {config.get('method')!r}")
