"""The deep hashing loss (thesis 4.2.3): batch-hard triplet loss on hand-made examples,
α·CE + β·triplet, and the loss decreasing during a few training steps."""

from __future__ import annotations

import pytest
import torch

from retrieval.hashing.losses import (
    HashingLoss,
    batch_hard_triplet_loss,
    pairwise_distances,
)


def test_pairwise_distances_are_euclidean_with_finite_gradient():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    d = pairwise_distances(x)
    assert d[0, 1].item() == pytest.approx(5.0, abs=1e-5)
    assert d[0, 2].item() == pytest.approx(0.0, abs=1e-5)
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_batch_hard_triplet_on_hand_made_points():
    # 1-d codes: class 0 at 0 and 1, class 1 at 4 and 10
    x = torch.tensor([[0.0], [1.0], [4.0], [10.0]])
    y = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest pos 1, hardest neg 4 → 1 − 4 + 2 = −1 → 0
    # anchor 1: pos 1, neg 3 → 1 − 3 + 2 = 0
    # anchor 2: pos 6, neg 3 → 6 − 3 + 2 = 5
    # anchor 3: pos 6, neg 9 → 6 − 9 + 2 = −1 → 0
    assert batch_hard_triplet_loss(x, y, margin=2.0).item() == pytest.approx(5 / 4, abs=1e-4)
    # margin 0: only anchor 2 violates (6 − 3 = 3)
    assert batch_hard_triplet_loss(x, y, margin=0.0).item() == pytest.approx(3 / 4, abs=1e-4)


def test_anchors_without_positive_or_negative_are_skipped():
    x = torch.tensor([[0.0], [1.0], [5.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])  # anchor 2 has no positive
    # anchor 0: 1 − 5 + 2 < 0; anchor 1: 1 − 4 + 2 = −1 → both 0
    assert batch_hard_triplet_loss(x, y).item() == pytest.approx(0.0, abs=1e-4)
    one_class = batch_hard_triplet_loss(x, torch.tensor([0, 0, 0]))
    assert one_class.item() == 0.0
    one_class.backward()  # still differentiable


def test_combined_loss_weights():
    codes = torch.tensor([[0.0], [1.0], [4.0], [10.0]])
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 1, 1])
    parts = HashingLoss()(codes, logits, y)
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert parts.classification.item() == pytest.approx(ce.item())
    assert parts.triplet.item() == pytest.approx(5 / 4, abs=1e-4)
    assert parts.total.item() == pytest.approx(1.0 * ce.item() + 5.0 * 5 / 4, abs=1e-4)


def test_loss_decreases_during_training_steps():
    torch.manual_seed(0)
    n, d, k = 64, 20, 4
    y = torch.arange(n) % k
    x = torch.randn(k, d)[y] + 0.8 * torch.randn(n, d)
    coding = torch.nn.Linear(d, 256)
    classifier = torch.nn.Linear(256, k)
    loss_fn = HashingLoss()
    optimizer = torch.optim.Adam([*coding.parameters(), *classifier.parameters()], lr=1e-2)
    losses = []
    for _ in range(30):
        codes = torch.tanh(coding(x))
        parts = loss_fn(codes, classifier(codes), y)
        optimizer.zero_grad()
        parts.total.backward()
        optimizer.step()
        losses.append(parts.total.item())
    assert losses[-1] < 0.5 * losses[0]
    assert sum(losses[-5:]) < sum(losses[:5])
