"""Shortcut probe: does the classifier need the image border?

The Kermany films carry burned-in text and laterality markers ("R", "L") near the edges, and
the two classes were not acquired in identical conditions, so a network can learn the border
instead of the lungs. The probe blanks the outer band of every test image (all pixels within
``band * side`` of an edge set to a constant) and re-evaluates the unchanged model:

    drop = metric(original images) - metric(border blanked)

for accuracy (argmax) and AUROC (binary: p(pneumonia); 3-class: macro one-vs-rest), with
95% CIs from a paired bootstrap over patients (both conditions are scored on the same
resampled images). A drop near 0 is evidence against a border shortcut; a large drop is
evidence for one, or that the border carries anatomy the model uses (for wide bands the band
reaches the lung apices and costophrenic angles, so read the drop against the band width).
Also reported: the share of predictions that change.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from ..errors import InputError
from ..metrics import bootstrap_cis

log = logging.getLogger(__name__)


def band_pixels(side: int, band: float) -> int:
    """Width in pixels of a border band of ``band`` x ``side`` (rounded)."""
    if not 0.0 <= band < 0.5:
        raise InputError(f"border band must be a fraction of the image side in [0, 0.5), "
                         f"got {band}")
    return int(round(band * side))


def blank_border(images: np.ndarray, band: float, value: int = 128) -> np.ndarray:
    """Copy of uint8 images (N, H, W) with the outer ``band`` x side pixels set to ``value``."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise InputError(f"images must be (N, H, W), got shape {images.shape}")
    out = np.array(images, copy=True)
    b = band_pixels(min(images.shape[1:]), band)
    if b > 0:
        out[:, :b] = value
        out[:, -b:] = value
        out[:, :, :b] = value
        out[:, :, -b:] = value
    return out


def _binary_auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count one half): equals ``roc_auc_score``, without its
    per-call overhead, which dominates a 1000-replicate bootstrap."""
    n1 = int(positive.sum())
    n0 = len(positive) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def task_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary: AUROC of p(class 1); more classes: macro one-vs-rest. NaN if a class is absent."""
    labels = np.asarray(labels)
    k = probs.shape[1]
    if len(np.unique(labels)) < k:
        return float("nan")
    if k == 2:
        return _binary_auroc(labels == 1, probs[:, 1])
    return float(np.mean([_binary_auroc(labels == c, probs[:, c]) for c in range(k)]))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _paired_statistics(labels: np.ndarray, p_plain: np.ndarray, p_blank: np.ndarray
                       ) -> dict[str, float]:
    acc_plain = float((p_plain.argmax(1) == labels).mean())
    acc_blank = float((p_blank.argmax(1) == labels).mean())
    au_plain = task_auroc(labels, p_plain)
    au_blank = task_auroc(labels, p_blank)
    return {"accuracy_plain": acc_plain, "accuracy_blanked": acc_blank,
            "accuracy_drop": acc_plain - acc_blank,
            "auroc_plain": au_plain, "auroc_blanked": au_blank,
            "auroc_drop": au_plain - au_blank,
            "changed_predictions": float((p_plain.argmax(1) != p_blank.argmax(1)).mean())}


def border_probe(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    normalization: dict[str, Any],
    bands: Sequence[float] = (0.1,),
    value: int = 128,
    input_size: int | None = None,
    patients: np.ndarray | None = None,
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    logits_plain: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy and AUROC with and without the border blanked, per band width.

    Args:
        model: classifier on normalised input (eval mode; its device is used).
        images: uint8 (N, H, W) test images; ``labels`` (N,) their classes.
        bands: band widths as fractions of the image side.
        value: the uint8 value blanked pixels take.
        input_size: side the images are resized to for the model (None: as they are).
        patients: patient id per image (bootstrap groups); None resamples images.
        logits_plain: the model's logits on ``images`` when already computed.

    Returns ``{"bands": [{"band", "band_px", "value", <metric>: {value, ci_low, ci_high}}]}``.
    """
    from ..inference import predict_logits

    labels = np.asarray(labels).astype(int)
    if len(labels) != len(images):
        raise InputError(f"{len(images)} images but {len(labels)} labels")
    if not 0 <= int(value) <= 255:
        raise InputError(f"blank value must be a uint8 intensity in [0, 255], got {value}")
    if logits_plain is None:
        logits_plain = predict_logits(model, np.asarray(images), normalization=normalization,
                                      batch_size=batch_size, input_size=input_size)
    p_plain = _softmax(logits_plain)
    h, w = np.asarray(images).shape[1:]
    side = min(h, w)
    results = []
    for band in bands:
        blanked = blank_border(images, band, int(value))
        p_blank = _softmax(predict_logits(model, blanked, normalization=normalization,
                                          batch_size=batch_size, input_size=input_size))
        cis = bootstrap_cis(_paired_statistics, [labels, p_plain, p_blank], groups=patients,
                            n_boot=n_boot, seed=seed)
        b = band_pixels(side, band)
        row = {"band": float(band), "band_px": b, "value": int(value),
               "share_of_image_blanked": float(1.0 - max(h - 2 * b, 0) * max(w - 2 * b, 0)
                                               / (h * w))}
        row.update(cis)
        results.append(row)
        log.info("border band %.3f (%d px): accuracy %.3f -> %.3f, AUROC %.3f -> %.3f, "
                 "%.1f%% predictions changed", band, row["band_px"],
                 cis["accuracy_plain"]["value"], cis["accuracy_blanked"]["value"],
                 cis["auroc_plain"]["value"], cis["auroc_blanked"]["value"],
                 100 * cis["changed_predictions"]["value"])
    return {"n_images": int(len(labels)), "n_boot": int(n_boot), "bands": results}
