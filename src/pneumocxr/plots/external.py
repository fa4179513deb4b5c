"""Figures of the external test sets: every model's ROC curve on one set."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from .common import plt, save, title

__all__ = ["roc_figure", "save"]


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], set_name: str,
               data_source: str, trained_on: str) -> "plt.Figure":
    """ROC of each score (``{label: (y 0/1, score, operating threshold)}``) on one external
    set, its shipped operating point marked."""
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    for label, (y, s, thr) in curves.items():
        y, s = np.asarray(y).astype(int), np.asarray(s, dtype=float)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        line, = ax.plot(fpr, tpr, label=f"{label} (AUROC {roc_auc_score(y, s):.3f})")
        pred = s >= thr
        ax.plot([pred[y == 0].mean()], [pred[y == 1].mean()], "o", color=line.get_color(),
                markersize=7, markeredgecolor="black", label=f"{label}: operating point")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=7)
    source = "demo" if trained_on == "demo" else data_source
    ax.set_title(title(f"External set {set_name!r}: ROC of every model\n(operating points "
                       "fitted on val, never on this set)", source), fontsize=9)
    fig.tight_layout()
    return fig
