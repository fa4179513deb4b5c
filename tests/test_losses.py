"""Focal loss (functional core + module) and the training-criterion factory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pneumocxr.losses import FocalLoss, build_criterion, class_weights, focal_loss


def test_focal_loss_with_gamma_0_and_no_alpha_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(10, 3), torch.randint(0, 3, (10,))
    assert torch.allclose(focal_loss(logits, target, alpha=None, gamma=0.0),
                          F.cross_entropy(logits, target), atol=1e-6)


def test_focal_loss_matches_the_formula_on_a_hand_computed_binary_case():
    # two equal logits: p_t = 0.5; target 1 (pneumonia) gets alpha = 0.25
    value = focal_loss(torch.zeros(1, 2), torch.tensor([1]), alpha=0.25, gamma=2.0)
    assert value.item() == pytest.approx(0.25 * 0.5 ** 2 * math.log(2), rel=1e-6)
    # target 0 (normal) gets 1 - alpha = 0.75
    value = focal_loss(torch.zeros(1, 2), torch.tensor([0]), alpha=0.25, gamma=2.0)
    assert value.item() == pytest.approx(0.75 * 0.5 ** 2 * math.log(2), rel=1e-6)


def test_focal_loss_down_weights_easy_examples_more_than_hard_ones():
    easy = torch.tensor([[0.0, 4.0]])
    hard = torch.tensor([[0.0, -1.0]])
    t = torch.tensor([1])
    ratio_easy = focal_loss(easy, t, None, 2.0) / F.cross_entropy(easy, t)
    ratio_hard = focal_loss(hard, t, None, 2.0) / F.cross_entropy(hard, t)
    assert ratio_easy < 0.001 < 0.5 < ratio_hard


def test_focal_loss_three_class_reductions_and_per_class_alpha():
    torch.manual_seed(1)
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    per = focal_loss(logits, target, alpha=None, reduction="none")
    assert per.shape == (6,)
    assert torch.allclose(focal_loss(logits, target, alpha=None, reduction="sum"), per.sum())
    assert torch.allclose(focal_loss(logits, target, alpha=None, reduction="mean"), per.mean())
    weighted = focal_loss(logits, target, alpha=[1.0, 2.0, 3.0], reduction="none")
    assert torch.allclose(weighted, per * torch.tensor([1.0, 2.0, 3.0])[target])
    scalar = focal_loss(logits, target, alpha=0.25, reduction="none")
    assert torch.allclose(scalar, 0.25 * per)


def test_focal_module_equals_functional_and_has_gradients():
    torch.manual_seed(2)
    logits = torch.randn(5, 2, requires_grad=True)
    target = torch.randint(0, 2, (5,))
    loss = FocalLoss(alpha=0.25, gamma=2.0)(logits, target)
    assert torch.equal(loss, focal_loss(logits, target, 0.25, 2.0))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs,message", [
    ({"reduction": "avg"}, "reduction must be one of"),
    ({"gamma": -1.0}, "gamma must be >= 0"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ({"alpha": [1.0, 2.0, 3.0]}, "alpha per class needs 2"),
])
def test_focal_loss_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        focal_loss(torch.zeros(2, 2), torch.tensor([0, 1]), **kwargs)


def test_focal_loss_rejects_logits_that_are_not_n_by_c():
    with pytest.raises(ValueError, match=r"\(N, C>=2\)"):
        focal_loss(torch.zeros(4), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="does not match"):
        focal_loss(torch.zeros(4, 2), torch.tensor([0, 1]))


def test_balanced_class_weights_follow_n_over_c_times_count():
    w = class_weights([300, 100], "balanced")
    assert torch.allclose(w, torch.tensor([400 / 600, 400 / 200]))
    assert class_weights([1, 2], "none") is None
    with pytest.raises(ValueError, match="every class present"):
        class_weights([10, 0], "balanced")


def test_build_criterion_gives_weighted_smoothed_cross_entropy_or_focal():
    ce = build_criterion("cross_entropy", [300, 100], class_weighting="balanced",
                         label_smoothing=0.1)
    logits, target = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    expected = F.cross_entropy(logits, target, weight=torch.tensor([400 / 600, 2.0]),
                               label_smoothing=0.1)
    assert torch.allclose(ce(logits, target), expected)
    assert isinstance(build_criterion("focal", [1, 1]), FocalLoss)


def test_build_criterion_rejects_settings_it_would_otherwise_ignore():
    with pytest.raises(ValueError, match="class_weights: none"):
        build_criterion("focal", [3, 1], class_weighting="balanced")
    with pytest.raises(ValueError, match="loss must be"):
        build_criterion("hinge", [3, 1])
    with pytest.raises(ValueError, match="label_smoothing"):
        build_criterion("cross_entropy", [3, 1], label_smoothing=1.0)
