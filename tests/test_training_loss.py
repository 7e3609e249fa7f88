"""The incomplete multi-label focal loss (thesis 6.3.3, Table 6.4 presets)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from training.losses import (
    IGNORE,
    NEG,
    POS,
    PRESETS,
    WEAK,
    IncompleteFocalLoss,
    get_preset,
    incomplete_focal_loss,
)

LN3 = math.log(3.0)  # logit of p = 0.75


def test_presets_follow_the_thesis():
    a, b, c = PRESETS["A"], PRESETS["B"], PRESETS["C"]
    assert (a.alpha_pos, a.alpha_weak, a.positive_images_only) == (0.8, 0.1, True)
    assert (b.alpha_pos, b.alpha_neg, b.alpha_weak) == (0.8, 0.1, 0.1)
    assert (c.alpha_pos, c.alpha_neg, c.alpha_weak, c.gamma) == (0.8, 0.8, 0.2, 2.0)
    assert get_preset("c") is c
    with pytest.raises(ValueError):
        get_preset("D")


def test_hand_computed_values():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [LN3, LN3, LN3, LN3]])
    targets = torch.tensor([[POS, NEG, WEAK, IGNORE], [POS, NEG, WEAK, IGNORE]])
    loss = incomplete_focal_loss(logits, targets, reduction="none")
    half = 0.25 * math.log(2.0)  # p = 0.5: 0.5² · −log 0.5
    expected = torch.tensor(
        [
            [0.8 * half, 0.8 * half, 0.2 * half, 0.0],
            # p = 0.75: pos 0.25² · −log 0.75; negatives 0.75² · −log 0.25
            [
                0.8 * 0.0625 * -math.log(0.75),
                0.8 * 0.5625 * -math.log(0.25),
                0.2 * 0.5625 * -math.log(0.25),
                0.0,
            ],
        ]
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    # Reduction: eq. 6.4 sums over concepts; the batch loss is the mean over images.
    mean = incomplete_focal_loss(logits, targets)
    torch.testing.assert_close(mean, expected.sum(1).mean())
    torch.testing.assert_close(
        incomplete_focal_loss(logits, targets, reduction="sum"), expected.sum()
    )


def test_gamma_zero_is_weighted_cross_entropy():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[POS, NEG, WEAK, POS]] * 6)
    loss = incomplete_focal_loss(
        logits, targets, alpha_pos=1, alpha_neg=1, alpha_weak=1, gamma=0, reduction="sum"
    )
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, (targets == POS).float(), reduction="sum"
    )
    torch.testing.assert_close(loss, bce)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.8])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
def test_without_weak_labels_equals_torchvision(alpha, gamma):
    """torchvision weights positives by α and negatives by 1 − α: α_pos = α, α_neg = 1 − α."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 5, generator=gen) * 4
    binary = torch.randint(0, 2, (32, 5), generator=gen)
    targets = torch.where(binary == 1, POS, NEG)
    ours = incomplete_focal_loss(
        logits, targets, alpha_pos=alpha, alpha_neg=1 - alpha, alpha_weak=0.0, gamma=gamma
    )
    theirs = (
        sigmoid_focal_loss(logits, binary.float(), alpha=alpha, gamma=gamma, reduction="sum")
        / logits.shape[0]
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("logit", [-100.0, -30.0, 30.0, 100.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_finite_values_and_gradients_at_extremes(logit, gamma):
    logits = torch.full((1, 3), logit, requires_grad=True)
    targets = torch.tensor([[POS, NEG, WEAK]])
    loss = incomplete_focal_loss(logits, targets, gamma=gamma)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    if logit > 0:  # confidently positive: the positive costs ≈ 0, the negatives a lot
        assert loss.item() > 1.0
    # The half-precision logits of autocast work too (the loss runs in float32).
    half = incomplete_focal_loss(logits.detach().half(), targets, gamma=gamma)
    assert torch.isfinite(half)


def test_confidently_wrong_positive_costs_its_log_loss():
    # p = sigmoid(−100): −α (1−p)^γ log p = α · 100 (no log(0) = −inf)
    loss = incomplete_focal_loss(torch.tensor([[-100.0]]), torch.tensor([[POS]]))
    assert loss.item() == pytest.approx(0.8 * 100.0, rel=1e-6)


def test_ignored_entries_contribute_nothing_and_get_no_gradient():
    logits = torch.tensor([[3.0, -2.0, 100.0], [-100.0, 0.5, 7.0]], requires_grad=True)
    targets = torch.tensor([[POS, IGNORE, IGNORE], [IGNORE, NEG, IGNORE]])
    loss = incomplete_focal_loss(logits, targets)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 2] == 0
    assert logits.grad[1, 0] == 0 and logits.grad[1, 2] == 0
    assert logits.grad[0, 0] != 0 and logits.grad[1, 1] != 0
    only = incomplete_focal_loss(
        torch.tensor([[3.0], [0.5]]), torch.tensor([[POS], [NEG]]), reduction="sum"
    )
    assert incomplete_focal_loss(logits.detach(), targets, reduction="sum") == pytest.approx(
        only.item()
    )
    all_ignored = incomplete_focal_loss(logits.detach(), torch.full((2, 3), IGNORE))
    assert all_ignored.item() == 0.0


def test_weak_negatives_weigh_less_than_labelled_ones():
    logits = torch.tensor([[1.0, 1.0]])
    loss = incomplete_focal_loss(logits, torch.tensor([[NEG, WEAK]]), reduction="none")
    assert loss[0, 1] == pytest.approx(loss[0, 0].item() * 0.2 / 0.8)


def test_module_uses_preset_and_gamma_override():
    logits = torch.tensor([[0.0, 0.0]])
    targets = torch.tensor([[POS, WEAK]])
    b = IncompleteFocalLoss("B")(logits, targets)
    assert b.item() == pytest.approx((0.8 + 0.1) * 0.25 * math.log(2.0), rel=1e-6)
    c0 = IncompleteFocalLoss("C", gamma=0)(logits, targets)
    assert c0.item() == pytest.approx((0.8 + 0.2) * math.log(2.0), rel=1e-6)
    with pytest.raises(ValueError):
        incomplete_focal_loss(logits, targets[:, :1])
