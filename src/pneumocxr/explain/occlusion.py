"""Occlusion sensitivity (Zeiler & Fergus, 2014), in the shape of captum's ``Occlusion``.

A ``window`` slides over the image with ``stride``; each position is replaced by ``baseline``
(all channels at once) and the model re-run. The map at a pixel is the drop of the target
(by default the predicted class's softmax probability) averaged over every window that covers
the pixel::

    A(p) = mean over windows W containing p of [ t(f(x)) - t(f(x with W set to baseline)) ]

Positive values mark evidence for the target, negative values evidence against it. Window
positions are ``0, stride, 2 * stride, ...`` plus, when the last one stops short of the edge,
one flush with it, so every pixel is covered by at least one window (captum leaves such an edge
strip out). Perturbed copies are evaluated ``batch_size`` at a time under
``torch.inference_mode``; one 224 px image with window 16 / stride 8 is 27 x 27 = 729 forward
passes (see ``bench/occlusion_speed.py`` for the time this takes).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError
from .targets import ClassifierOutputSoftmaxTarget, Target, model_device, resolve_targets

log = logging.getLogger(__name__)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise InputError(f"{name} must be a positive integer or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of ``size`` pixels (last one flush)."""
    if window > size:
        raise InputError(f"occlusion window ({window} px) is larger than the image ({size} px); "
                         "lower explain.occlusion.window")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


class Occlusion:
    """Occlusion sensitivity of ``model`` (images in [0, 1] -> logits).

    Example::

        occ = Occlusion(ImageModel(classifier, meta["normalization"]))
        maps = occ.attribute(x, window=16, stride=8, baseline=0.5, batch_size=64)
    """

    def __init__(self, model: nn.Module):
        self.model = model

    @torch.inference_mode()
    def attribute(
        self,
        inputs: torch.Tensor,
        targets: Target | Sequence[Target] | None = None,
        *,
        window: int | Sequence[int] = 16,
        stride: int | Sequence[int] = 8,
        baseline: float = 0.5,
        batch_size: int = 64,
        channels_last: bool = False,
        progress: bool = False,
    ) -> torch.Tensor:
        """Occlusion maps (N, H, W) for images ``inputs`` (N, C, H, W).

        Args:
            targets: one callable per image, one for all, or None: the softmax probability
                of each image's predicted class.
            window, stride: window side(s) and step(s) in pixels.
            baseline: the value occluded pixels take.
            batch_size: perturbed copies per forward pass (memory vs speed).
            channels_last: pass the perturbed batches in channels-last memory format
                (faster convolutions on CPU when the model was converted with
                ``model.to(memory_format=torch.channels_last)``).
            progress: a tqdm bar over images.
        """
        wh, ww = _pair(window, "window")
        sh, sw = _pair(stride, "stride")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if inputs.ndim != 4:
            raise InputError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
        n, _, h, w = inputs.shape
        positions = [(r, c) for r in window_starts(h, wh, sh) for c in window_starts(w, ww, sw)]
        was_training = self.model.training
        self.model.eval()
        device = model_device(self.model)
        x_all = inputs.to(device, torch.float32)
        base_out = self.model(x_all)
        targets = resolve_targets(targets, n, ClassifierOutputSoftmaxTarget, base_out.argmax(1))
        rows = torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        maps = torch.zeros(n, h, w, dtype=torch.float64)
        for i in tqdm(range(n), desc="occlusion", disable=not progress, leave=False):
            x = x_all[i:i + 1]
            ref = targets[i](base_out[i:i + 1]).reshape(())
            total = torch.zeros(h, w, dtype=torch.float64, device=device)
            count = torch.zeros(h, w, dtype=torch.float64, device=device)
            for start in range(0, len(positions), batch_size):
                pos = torch.tensor(positions[start:start + batch_size], device=device)
                r0 = pos[:, 0].view(-1, 1, 1)
                c0 = pos[:, 1].view(-1, 1, 1)
                inside = (rows >= r0) & (rows < r0 + wh) & (cols >= c0) & (cols < c0 + ww)
                xb = torch.where(inside[:, None], torch.as_tensor(baseline, dtype=x.dtype,
                                                                  device=device), x)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                drop = (ref - targets[i](self.model(xb)).reshape(-1)).double()
                total += (drop.view(-1, 1, 1) * inside).sum(0)
                count += inside.sum(0)
            maps[i] = (total / count).cpu()
        self.model.train(was_training)
        return maps.float()
