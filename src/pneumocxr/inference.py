"""Inference of a classifier on uint8 image arrays: :func:`predict_logits`.

Batched forward passes in eval mode (autocast for bf16 / fp16), images scaled and normalised
as in training. Training, evaluation, embeddings and explanations all call it, so a model gives
the same numbers in every stage; what the logits mean is :mod:`pneumocxr.logits`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .datasets import ArrayDataset, iterate_batches, to_float
from .errors import InputError


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``bf16`` -> torch.bfloat16, ``fp16`` -> torch.float16 (autocast), ``fp32`` -> None."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise InputError(f"precision must be fp32, bf16 or fp16 (auto is resolved by train), "
                     f"got {precision!r}")


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    data: ArrayDataset | np.ndarray,
    *,
    normalization: dict[str, Any],
    batch_size: int = 128,
    input_size: int | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Logits (N, C) float32 of ``model`` (eval mode) on uint8 images (N, H, W).

    Images are scaled to [0, 1], resized to ``input_size`` when it differs from theirs and
    normalised with ``normalization`` (``{"mean": [...], "std": [...]}``, the checkpoint's
    ``meta["normalization"]``).
    """
    from .models import normalize

    if isinstance(data, np.ndarray):
        data = ArrayDataset(data, np.zeros(len(data), dtype=np.int64), ["any"], name="images")
    device = next(model.parameters()).device
    amp = autocast_dtype(precision, device)
    was_training = model.training
    model.eval()
    out = []
    for xb, _ in tqdm(iterate_batches(data, batch_size), total=-(-len(data) // batch_size),
                      desc=f"predict {data.name}", disable=not progress, leave=False):
        x = normalize(to_float(xb, input_size).to(device), normalization)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
        out.append(logits.float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()
