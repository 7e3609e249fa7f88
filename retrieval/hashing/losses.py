"""The deep hashing loss (thesis 4.2.3, eq. 4.2–4.4): ``L = α·L_c + β·L_t``.

* ``L_c``: cross-entropy of the class layer (softmax over the classes);
* ``L_t``: batch-hard triplet loss (Hermans et al. 2017, "In defense of the triplet
  loss", the "hard triplets" the thesis generates from each batch): for every anchor the
  *farthest* positive and the *nearest* negative in the batch, Euclidean distance on the
  256-d tanh codes, ``max(d(a,p) − d(a,n) + margin, 0)``, averaged over the anchors that
  have both a positive and a negative in the batch.

Thesis values: α = 1, β = 5, margin γ = 2 (the codes live in [−1, 1]^256, so distances
go up to 32 and a margin of 2 is about one flipped sign in four bits of difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .options import ALPHA, BETA, MARGIN


def pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances ``(n, n)``; the ``eps`` keeps the gradient of ``sqrt`` finite
    at zero distance (identical codes, the diagonal)."""
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] - 2.0 * (x @ x.t()) + sq[None, :]
    return torch.sqrt(d2.clamp_min(0.0) + eps)


def batch_hard_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = MARGIN
) -> torch.Tensor:
    """Mean batch-hard triplet loss; 0 (with a gradient path) when no anchor qualifies."""
    dist = pairwise_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
    if not bool(valid.any()):
        return embeddings.sum() * 0.0
    hardest_pos = torch.where(pos_mask, dist, torch.zeros_like(dist)).max(dim=1).values
    big = dist.max().detach() + 1.0
    hardest_neg = torch.where(neg_mask, dist, big).min(dim=1).values
    losses = F.relu(hardest_pos - hardest_neg + margin)
    return losses[valid].mean()


@dataclass
class LossParts:
    total: torch.Tensor
    classification: torch.Tensor
    triplet: torch.Tensor


class HashingLoss(nn.Module):
    """``α·CE(logits, y) + β·batch-hard-triplet(codes, y)``."""

    def __init__(self, alpha: float = ALPHA, beta: float = BETA, margin: float = MARGIN):
        super().__init__()
        self.alpha, self.beta, self.margin = float(alpha), float(beta), float(margin)

    def forward(self, codes: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> LossParts:
        ce = F.cross_entropy(logits, labels)
        tri = batch_hard_triplet_loss(codes, labels, self.margin)
        return LossParts(self.alpha * ce + self.beta * tri, ce, tri)
