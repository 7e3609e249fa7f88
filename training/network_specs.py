"""The registry of concept networks by name — torch-free, for the pages and the options.

The pages (network choices, the weights hint) and :class:`training.config.TrainConfig`
only need names, default image sizes and which ImageNet weights a network starts from.
Building a network needs torch: every spec's ``build_backbone`` imports
:mod:`training.networks` (and so torch) only when it is *called*, i.e. in the worker.

:mod:`training.networks` re-exports everything here, so ``training.networks.NETWORKS``,
``get_spec`` and ``register`` keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from torch import nn

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


# --- backbone builders: torch is imported when one is called --------------------------------
def _efficientnet(variant: str, **override) -> Callable[[int], tuple[nn.Module, int]]:
    def build(image_size: int) -> tuple[nn.Module, int]:
        from .networks import EfficientNetBackbone

        module = EfficientNetBackbone(variant, image_size, **override)
        return module, module.out_channels

    return build


def _tiny_cnn(image_size: int) -> tuple[nn.Module, int]:
    from .networks import TinyCNN

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
