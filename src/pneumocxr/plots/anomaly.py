"""Figures of the anomaly stage (each function returns a matplotlib Figure; save with ``save``)."""

from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from ..errors import InputError
from .common import save, title

__all__ = ["reconstruction_grid", "score_histogram", "roc_figure", "save"]

CLASS_NAMES = ("normal", "pneumonia")
CLASS_COLORS = ("#1f77b4", "#d62728")


def reconstruction_grid(inputs: np.ndarray, recons: np.ndarray, labels: np.ndarray,
                        scores: np.ndarray, threshold: float, data_source: str, *,
                        anomaly_maps: np.ndarray | None = None,
                        map_label: str = "anomaly map") -> plt.Figure:
    """Input / reconstruction / absolute-error map (and the score's own map, when it has one)
    for a few normal and pneumonia images, one column each.

    Args:
        inputs, recons: (N, H, W) in [0, 1]. ``labels``: 0 normal, 1 pneumonia.
        scores: anomaly score per column (shown with the verdict at ``threshold``).
        anomaly_maps: optional (N, h, w) per-location map of the score (e.g. patch distances).
    """
    inputs, recons = np.asarray(inputs), np.asarray(recons)
    n = len(inputs)
    if n == 0:
        raise InputError("reconstruction_grid needs at least one image")
    errors = np.abs(inputs - recons)
    rows = [("input", inputs, "gray", (0.0, 1.0)), ("reconstruction", recons, "gray", (0.0, 1.0)),
            ("|input - reconstruction|", errors, "magma", (0.0, float(errors.max()) or 1.0))]
    if anomaly_maps is not None:
        amax = float(np.max(anomaly_maps)) or 1.0
        rows.append((map_label, np.asarray(anomaly_maps), "inferno",
                     (float(np.min(anomaly_maps)), amax)))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.9 * n + 1.2, 2.0 * len(rows) + 0.8),
                             squeeze=False)
    for r, (name, arr, cmap, (lo, hi)) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            im = ax.imshow(arr[c], cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest"
                           if arr[c].shape[0] < inputs.shape[1] else "antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if r == 0:
                verdict = "flagged" if scores[c] >= threshold else "passed"
                ax.set_title(f"{CLASS_NAMES[int(labels[c])]}\nscore {scores[c]:.3g} ({verdict})",
                             fontsize=8, color=CLASS_COLORS[int(labels[c])])
        if r >= 2:
            fig.colorbar(im, ax=list(axes[r]), fraction=0.02, pad=0.01)
    fig.suptitle(title("Autoencoder trained on normal X-rays: test examples", data_source),
                 fontsize=10)
    return fig


def score_histogram(scores: np.ndarray, labels: np.ndarray, threshold: float,
                    data_source: str, *, score_label: str = "anomaly score",
                    split: str = "test", bins: int = 40) -> plt.Figure:
    """Overlaid histograms of the score for normal and pneumonia images, threshold marked."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(int)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    edges = np.histogram_bin_edges(scores, bins=bins)
    for c in (0, 1):
        s = scores[labels == c]
        if len(s):
            ax.hist(s, bins=edges, alpha=0.55, density=True, color=CLASS_COLORS[c],
                    label=f"{CLASS_NAMES[c]} (n={len(s)})")
    ax.axvline(threshold, color="black", linestyle="--",
               label=f"threshold {threshold:.3g} (val EER)")
    ax.set_xlabel(f"anomaly score: {score_label}\n(higher = less like the normal training images)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(title(f"Anomaly score by class, {split} split", data_source), fontsize=10)
    fig.tight_layout()
    return fig


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], threshold: float,
               data_source: str, *, score_label: str = "anomaly score") -> plt.Figure:
    """ROC curve per split (``{split: (labels, scores)}``) with the operating point of the
    validation-chosen threshold marked on each."""
    fig, ax = plt.subplots(figsize=(5.4, 5.0))
    for split, (y, s) in curves.items():
        y, s = np.asarray(y).astype(int), np.asarray(s, dtype=float)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        line, = ax.plot(fpr, tpr, label=f"{split} (AUROC {roc_auc_score(y, s):.3f}, n={len(y)})")
        pred = s >= threshold
        ax.plot([pred[y == 0].mean()], [pred[y == 1].mean()], "o", color=line.get_color(),
                markersize=7, markeredgecolor="black",
                label=f"{split} operating point")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.plot([0, 1], [1, 0], "--", color="lightgrey", linewidth=0.8, label="FPR = FNR (EER line)")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title(f"ROC of the anomaly score, threshold {threshold:.3g}\n{score_label}",
                       data_source), fontsize=9)
    fig.tight_layout()
    return fig
