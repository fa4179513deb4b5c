"""What the explainers explain: a classifier on [0, 1] images, and the scalar to attribute.

Explainers work on images in [0, 1] (N, C, H, W), so a baseline ("grey out this window with
0.5") means the same thing for every model. :class:`ImageModel` puts a registry classifier's
normalization inside the forward pass.

Targets are small callables (as in pytorch-grad-cam): ``target(model_output) -> (B,)`` picks
the scalar each explanation is about, for a batch of outputs (B, num_classes) of one image or
of several images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..models import normalize

Target = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ClassifierOutputTarget:
    """The logit of class ``category``."""

    category: int

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.category]


@dataclass(frozen=True)
class ClassifierOutputSoftmaxTarget:
    """The softmax probability of class ``category``."""

    category: int

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output, dim=-1)[..., self.category]


class ImageModel(nn.Module):
    """``model(normalize(x))`` for images ``x`` in [0, 1]: what explainers perturb
    (:func:`pneumocxr.models.normalize`, so with the checkpoint's equalization too).

    Args:
        model: a classifier taking normalised input (a :class:`pneumocxr.models.Classifier`).
        normalization: ``{"mean": [...], "std": [...]}`` (a checkpoint's
            ``meta["normalization"]``), one value per input channel.
    """

    def __init__(self, model: nn.Module, normalization: dict[str, Any]):
        super().__init__()
        mean = torch.as_tensor(normalization["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(normalization["std"], dtype=torch.float32).view(1, -1, 1, 1)
        if mean.numel() != std.numel() or bool((std <= 0).any()):
            raise InputError(f"normalization needs one mean and one positive std per channel, "
                             f"got {normalization}")
        self.model = model
        self.normalization = dict(normalization)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(normalize(x, self.normalization))


def resolve_targets(targets: Target | Sequence[Target] | None, n: int,
                    default: Callable[[int], Target], predicted: torch.Tensor | None
                    ) -> list[Target]:
    """One target per image: the given ones, one shared callable, or ``default(predicted)``."""
    if targets is None:
        if predicted is None:
            raise InputError("targets=None needs the predicted classes")
        return [default(int(c)) for c in predicted.tolist()]
    if callable(targets):
        return [targets] * n
    targets = list(targets)
    if len(targets) != n:
        raise InputError(f"got {len(targets)} targets for {n} images; pass one per image, "
                         "a single callable, or None (the predicted class)")
    return targets


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU when it has neither)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")
