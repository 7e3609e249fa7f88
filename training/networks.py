"""Concept networks built by name from a config dict (a small registry, as timm does).

A config (stored as ``config.json`` of every model version) looks like::

    {"network": {"name": "efficientnet-b3", "num_classes": 91, "dropout": 0.2},
     "preprocessing": {"image_size": 300, "mean": [...], "std": [...], "resize": "squash"}}

The network is the thesis' (6.3.3, 6.3.5): an EfficientNet backbone (B3 by default) with
a new multi-label head — global average pooling → batch norm → dropout 0.2 → linear, one
logit per concept (the sigmoid lives in the loss and in the scorer). Its input is the
uint8/0–255 image; the normalisation of the config's preprocessing is a buffer of the
network, so training and inference cannot disagree about it.

Tiny networks (``efficientnet-tiny``, ``tiny-cnn``) exist for tests and the demo: random
initialisation, seconds per epoch on a CPU.

The registry itself (names, default sizes, pretrained weights families) is the torch-free
:mod:`training.network_specs`, which the pages read; it is re-exported here.
"""

from __future__ import annotations

import torch
from torch import nn

from .network_specs import (
    DEFAULT_DROPOUT,
    DEFAULT_NETWORK,
    NETWORKS,
    NetworkSpec,
    available_networks,
    get_spec,
    register,
)
from .preprocessing import Preprocessing

__all__ = [
    "DEFAULT_DROPOUT",
    "DEFAULT_NETWORK",
    "NETWORKS",
    "ConceptNet",
    "EfficientNetBackbone",
    "NetworkSpec",
    "TinyCNN",
    "available_networks",
    "build_model",
    "get_spec",
    "network_config",
    "register",
]


# --- backbones --------------------------------------------------------------------------
class EfficientNetBackbone(nn.Module):
    """efficientnet-pytorch's model without its classifier; ``net`` keeps the package's
    parameter names so its ImageNet checkpoints load directly."""

    def __init__(self, variant: str, image_size: int, **override):
        super().__init__()
        from efficientnet_pytorch import EfficientNet

        self.net = EfficientNet.from_name(
            variant, image_size=image_size, include_top=False, **override
        )
        self.out_channels = self.net._bn1.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


class TinyCNN(nn.Module):
    """Four conv–BN–ReLU stages with stride 2: enough for coloured shapes, ~25 k weights."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# --- the concept network ------------------------------------------------------------------
class ConceptNet(nn.Module):
    """Backbone + multi-label head; input: images as 0–255 values (uint8 or float)."""

    def __init__(
        self,
        backbone: nn.Module,
        channels: int,
        num_classes: int,
        preprocessing: Preprocessing,
        dropout: float = DEFAULT_DROPOUT,
    ):
        super().__init__()
        self.backbone = backbone
        mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(preprocessing.std).view(1, 3, 1, 1) * 255.0
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.BatchNorm1d(channels),
            nn.Dropout(dropout),
            nn.Linear(channels, num_classes),
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.normalize(images))
        return self.head(torch.flatten(self.pool(features), 1))

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def backbone_layers(self) -> list[nn.Module]:
        """Layers with weights of their own that are not batch norm, input to output: the
        unit of "the top ~20 layers" trained in phase 2 (6.3.5). (efficientnet-pytorch's
        same-padding convolutions hold a padding child, so "leaf" would miss them.)"""
        return [
            m
            for m in self.backbone.modules()
            if any(True for _ in m.parameters(recurse=False))
            and not isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]


def network_config(
    name: str = DEFAULT_NETWORK,
    num_classes: int = 1,
    *,
    image_size: int | None = None,
    dropout: float = DEFAULT_DROPOUT,
) -> dict:
    """A complete model config with the network's default image size filled in."""
    spec = get_spec(name)
    size = int(image_size or spec.default_image_size)
    return {
        "network": {"name": name, "num_classes": int(num_classes), "dropout": float(dropout)},
        "preprocessing": Preprocessing(image_size=size).as_dict(),
    }


def build_model(config: dict) -> ConceptNet:
    """The network a config describes, with freshly initialised weights."""
    net = config["network"]
    spec = get_spec(net["name"])
    preprocessing = Preprocessing.from_dict(config["preprocessing"])
    backbone, channels = spec.build_backbone(preprocessing.image_size)
    return ConceptNet(
        backbone,
        channels,
        int(net["num_classes"]),
        preprocessing,
        dropout=float(net.get("dropout", DEFAULT_DROPOUT)),
    )
