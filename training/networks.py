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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .preprocessing import Preprocessing

DEFAULT_NETWORK = "efficientnet-b3"
DEFAULT_DROPOUT = 0.2


@dataclass(frozen=True)
class NetworkSpec:
    """One registry entry. ``pretrained`` names the ImageNet weights file family
    (``training.weights``) or is ``None`` for networks that only train from scratch."""

    name: str
    build_backbone: Callable[[int], tuple[nn.Module, int]]  # image_size → (module, channels)
    default_image_size: int
    pretrained: str | None
    description: str = ""


NETWORKS: dict[str, NetworkSpec] = {}


def register(spec: NetworkSpec) -> NetworkSpec:
    NETWORKS[spec.name] = spec
    return spec


def get_spec(name: str) -> NetworkSpec:
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(
            f"Unknown network {name!r}; available: {', '.join(sorted(NETWORKS))}."
        ) from None


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


def _efficientnet(variant: str, **override) -> Callable[[int], tuple[nn.Module, int]]:
    def build(image_size: int) -> tuple[nn.Module, int]:
        module = EfficientNetBackbone(variant, image_size, **override)
        return module, module.out_channels

    return build


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


def _tiny_cnn(image_size: int) -> tuple[nn.Module, int]:
    module = TinyCNN()
    return module, module.out_channels


_EFFICIENTNET_SIZES = {0: 224, 1: 240, 2: 260, 3: 300, 4: 380, 5: 456, 6: 528, 7: 600}
for _b, _size in _EFFICIENTNET_SIZES.items():
    register(
        NetworkSpec(
            name=f"efficientnet-b{_b}",
            build_backbone=_efficientnet(f"efficientnet-b{_b}"),
            default_image_size=_size,
            pretrained=f"efficientnet-b{_b}",
            description=f"EfficientNet-B{_b} (ImageNet-initialised), {_size} px",
        )
    )
register(
    NetworkSpec(
        name="efficientnet-tiny",
        build_backbone=_efficientnet(
            "efficientnet-b0",
            width_coefficient=0.5,
            depth_coefficient=0.5,
            drop_connect_rate=0.0,
            # TF's BN momentum (0.99 here ↔ 0.01 in PyTorch terms) leaves the running
            # statistics near their initial values after the few hundred steps a tiny
            # from-scratch run has, and evaluation then sees garbage.
            batch_norm_momentum=0.9,
        ),
        default_image_size=64,
        pretrained=None,
        description="EfficientNet-B0 at half width and depth, 64 px (tests, demo; random init)",
    )
)
register(
    NetworkSpec(
        name="tiny-cnn",
        build_backbone=_tiny_cnn,
        default_image_size=64,
        pretrained=None,
        description="Four conv layers, 64 px (tests, demo; random init)",
    )
)


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


def available_networks() -> list[dict]:
    """For the "advanced" fold of the training page."""
    return [
        {
            "name": s.name,
            "default_image_size": s.default_image_size,
            "pretrained": s.pretrained is not None,
            "description": s.description,
        }
        for s in NETWORKS.values()
    ]
