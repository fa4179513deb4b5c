"""Classification losses: focal loss (functional core + module) and the criterion factory."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

REDUCTIONS = ("none", "mean", "sum")


def _alpha_vector(alpha: float | Sequence[float] | None, num_classes: int,
                  device: torch.device) -> torch.Tensor | None:
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)):
        a = float(alpha)
        if not 0.0 <= a <= 1.0:
            raise InputError(f"focal loss alpha must be in [0, 1], got {alpha}")
        values = [1.0 - a, a] if num_classes == 2 else [a] * num_classes
    else:
        values = [float(v) for v in alpha]
        if len(values) != num_classes or min(values) < 0:
            raise InputError(f"focal loss alpha per class needs {num_classes} non-negative "
                             f"values, got {list(alpha)}")
    return torch.tensor(values, dtype=torch.float32, device=device)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float | Sequence[float] | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Softmax focal loss (Lin et al., 2017) for ``C >= 2`` classes.

    .. math::

        \mathrm{FL}(p_t) = -\alpha_t \, (1 - p_t)^{\gamma} \, \log p_t,
        \qquad p_t = \mathrm{softmax}(z)_{y}

    where ``y`` is the target class of a sample. ``alpha_t`` weights the target class:

    * float and ``C == 2``: ``alpha`` for class 1 (the positive class, pneumonia) and
      ``1 - alpha`` for class 0, as in torchvision's ``sigmoid_focal_loss`` (a softmax over
      two logits equals a sigmoid of their difference);
    * float and ``C > 2``: ``alpha`` for every class (a constant scale);
    * a sequence of ``C`` values: ``alpha[y]``; ``None``: 1 (no weighting).

    ``gamma = 0`` and ``alpha = None`` give the cross-entropy.

    Args:
        logits: (N, C) unnormalised scores.
        target: (N,) class indices in ``[0, C)``.
        reduction: ``"none"`` (per-sample losses), ``"mean"`` (over samples) or ``"sum"``.
    """
    if reduction not in REDUCTIONS:
        raise InputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise InputError(f"focal_loss expects logits of shape (N, C>=2), got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise InputError(f"target shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)}; expected (N,) class indices")
    if gamma < 0:
        raise InputError(f"focal loss gamma must be >= 0, got {gamma}")
    target = target.long()
    logp_t = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    loss = -((1.0 - logp_t.exp()) ** gamma) * logp_t
    a = _alpha_vector(alpha, logits.shape[1], logits.device)
    if a is not None:
        loss = a[target] * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss` (same arguments, same formula)."""

    def __init__(self, alpha: float | Sequence[float] | None = 0.25, gamma: float = 2.0,
                 reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise InputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if gamma < 0:
            raise InputError(f"focal loss gamma must be >= 0, got {gamma}")
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


def class_weights(counts: Sequence[int], mode: str = "balanced") -> torch.Tensor | None:
    """Per-class loss weights: ``"balanced"`` = ``n / (C * count_c)`` (sklearn's rule); ``"none"``."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise InputError(f"class_weights must be 'none' or 'balanced', got {mode!r}")
    counts = np.asarray(counts, dtype=np.float64)
    if np.any(counts <= 0):
        raise InputError(f"balanced class weights need every class present in train; counts {counts.tolist()}")
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


def build_criterion(
    name: str,
    class_counts: Sequence[int],
    *,
    focal_alpha: float | Sequence[float] | None = 0.25,
    focal_gamma: float = 2.0,
    class_weighting: str = "none",
    label_smoothing: float = 0.0,
) -> nn.Module:
    """The training loss: ``"focal"`` (:class:`FocalLoss`) or ``"cross_entropy"``.

    Cross-entropy takes ``class_weighting`` (``none``/``balanced``, from ``class_counts``) and
    ``label_smoothing``; focal loss takes ``focal_alpha``/``focal_gamma`` and rejects the other
    two rather than silently ignoring them.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise InputError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if name == "focal":
        if class_weighting != "none" or label_smoothing:
            raise InputError("focal loss weighs classes through focal_alpha; set "
                             "class_weights: none and label_smoothing: 0 with loss: focal")
        return FocalLoss(focal_alpha, focal_gamma)
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(weight=class_weights(class_counts, class_weighting),
                                   label_smoothing=label_smoothing)
    raise InputError(f"loss must be 'focal' or 'cross_entropy', got {name!r}")
