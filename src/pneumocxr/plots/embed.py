"""Figures of the embedding stages: t-SNE maps by class, k-NN vs head confusion matrices."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay

from .common import plt, save, title

__all__ = ["class_colors", "plot_tsne", "plot_confusion_grid", "save"]

# one colour per class name, the same in every figure of the project's embedding stages
_CLASS_COLORS = {"normal": "#1f77b4", "pneumonia": "#d62728", "bacteria": "#d62728",
                 "virus": "#2ca02c"}


def class_colors(class_names: Sequence[str]) -> list[str]:
    """Fixed colours for known class names (normal blue, pneumonia/bacteria red, virus green)."""
    fallback = plt.get_cmap("tab10").colors
    return [_CLASS_COLORS.get(str(n).lower(), fallback[i % len(fallback)])
            for i, n in enumerate(class_names)]


def plot_tsne(
    panels: Sequence[tuple[np.ndarray, np.ndarray, str]],
    class_names: Sequence[str],
    title_text: str,
    data_source: str,
    *,
    note: str | None = None,
) -> "plt.Figure":
    """One scatter panel per ``(coords (N, 2), labels (N,), subtitle)``, points coloured by class.

    The legend gives each class's count in the panel; ``note`` (e.g. a silhouette score) is
    printed under the title.
    """
    colors = class_colors(class_names)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5.2), squeeze=False)
    for ax, (coords, labels, subtitle) in zip(axes[0], panels):
        labels = np.asarray(labels)
        for c, name in enumerate(class_names):
            sel = labels == c
            ax.scatter(coords[sel, 0], coords[sel, 1], s=9, alpha=0.7, color=colors[c],
                       linewidths=0, label=f"{name} (n={int(sel.sum())})")
        ax.set_title(subtitle)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.legend(loc="best", markerscale=2, fontsize=8, title="class")
    heading = title(title_text, data_source)
    if note:
        heading = f"{heading}\n{note}"
    fig.suptitle(heading)
    fig.tight_layout()
    return fig


def plot_confusion_grid(
    matrices: Mapping[str, np.ndarray | list],
    class_names: Sequence[str],
    title_text: str,
    data_source: str,
) -> "plt.Figure":
    """One row per classifier: confusion matrix in counts (left) and row-normalised (right).

    Row-normalised cells are the share of each true class given each prediction (the diagonal is
    per-class recall). Drawn with scikit-learn's ``ConfusionMatrixDisplay``.
    """
    n = len(matrices)
    size = 2.6 + 0.9 * len(class_names)
    fig, axes = plt.subplots(n, 2, figsize=(2 * size + 1.5, n * size), squeeze=False)
    for row, (name, cm) in enumerate(matrices.items()):
        cm = np.asarray(cm, dtype=float)
        sums = cm.sum(axis=1, keepdims=True)
        norm = np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)
        for col, (mat, fmt, what) in enumerate(((cm, ".0f", "counts"),
                                                (norm, ".2f", "row-normalised"))):
            ax = axes[row, col]
            disp = ConfusionMatrixDisplay(mat, display_labels=list(class_names))
            disp.plot(ax=ax, cmap="Blues", values_format=fmt, colorbar=True,
                      im_kw={"vmin": 0, "vmax": 1} if col == 1 else None)
            ax.set_title(f"{name}: {what}")
            ax.set_xlabel("predicted class")
            ax.set_ylabel("true class" if col == 0 else "")
    fig.suptitle(title(title_text, data_source))
    fig.tight_layout()
    return fig
