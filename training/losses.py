"""Weighted incomplete multi-label focal loss (seed thesis section 6.3.3, eq. 6.4).

Archive labels are *incomplete*: an image is usually labelled for one or two concepts
only. Ignoring the unlabelled entries would leave most concepts without negatives, so
(6.3.3) an image that is positive for some concept counts as a *weak* negative for every
concept it is not labelled for, with a small weight. Labelled negatives (from review and
feedback) are mostly hard examples and get a high weight. A focal factor (Lin et al.
2017) emphasises difficult samples::

    L = Σ_k l(y_k, p_k)
    l = −α_pos (1−p)^γ log p        positive
        −α_weak p^γ log(1−p)        weak negative
        −α_neg  p^γ log(1−p)        labelled negative
        0                           neutral / unknown (ignored)

Everything is computed from logits with log-sigmoid: ``log p = logsigmoid(x)``,
``log(1−p) = logsigmoid(−x)`` and the focal factors as ``exp(γ · logsigmoid(±x))``, so
there is no ``log(0)`` and no ``0^γ`` with an infinite derivative at p = 0 or 1.

The target codes and the presets live in the torch-free :mod:`training.constants` (the
pages read them) and are re-exported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .constants import (  # noqa: F401 - re-exported: the codes and presets live there
    DEFAULT_PRESET,
    IGNORE,
    NEG,
    POS,
    PRESETS,
    WEAK,
    LossPreset,
    get_preset,
)

__all__ = [
    "DEFAULT_PRESET",
    "IGNORE",
    "NEG",
    "POS",
    "PRESETS",
    "WEAK",
    "IncompleteFocalLoss",
    "LossPreset",
    "get_preset",
    "incomplete_focal_loss",
]


def incomplete_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha_pos: float = 0.8,
    alpha_neg: float = 0.8,
    alpha_weak: float = 0.2,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Eq. 6.4 for a batch: ``logits`` and ``targets`` (codes above) of shape (N, K).

    ``reduction="mean"`` sums over concepts and averages over images (the loss of one
    image is eq. 6.4's sum over k); ``"sum"`` sums everything; ``"none"`` returns the
    (N, K) element losses. Ignored entries are exactly 0 with zero gradient.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}")
    x = logits.float()  # half-precision logits from autocast: the loss is always fp32
    log_p = F.logsigmoid(x)
    log_not_p = F.logsigmoid(-x)
    pos_term = -alpha_pos * torch.exp(gamma * log_not_p) * log_p
    neg_like = -torch.exp(gamma * log_p) * log_not_p
    loss = torch.where(targets == POS, pos_term, torch.zeros_like(x))
    loss = torch.where(targets == NEG, alpha_neg * neg_like, loss)
    loss = torch.where(targets == WEAK, alpha_weak * neg_like, loss)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum(dim=1).mean() if loss.numel() else loss.sum()
    raise ValueError(f"Unknown reduction {reduction!r}")


class IncompleteFocalLoss(torch.nn.Module):
    """Module form of :func:`incomplete_focal_loss` configured from a :class:`LossPreset`."""

    def __init__(self, preset: LossPreset | str = DEFAULT_PRESET, gamma: float | None = None):
        super().__init__()
        self.preset = get_preset(preset) if isinstance(preset, str) else preset
        self.gamma = self.preset.gamma if gamma is None else float(gamma)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p = self.preset
        return incomplete_focal_loss(
            logits,
            targets,
            alpha_pos=p.alpha_pos,
            alpha_neg=p.alpha_neg,
            alpha_weak=p.alpha_weak,
            gamma=self.gamma,
        )
