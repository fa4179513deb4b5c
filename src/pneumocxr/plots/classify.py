"""Figures of the classification stages (each returns a matplotlib Figure; save with ``save``)."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from .common import save, title

__all__ = ["confusion_figure", "roc_figure", "reliability_figure", "history_figure",
           "comparison_figure", "save"]


def _matrix_panel(ax, values: np.ndarray, class_names: Sequence[str], fmt: str, vmax: float,
                  panel_title: str) -> None:
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(panel_title)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            ax.text(j, i, format(v, fmt), ha="center", va="center",
                    color="white" if v > vmax / 2 else "black")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def confusion_figure(cm: np.ndarray, class_names: Sequence[str], text: str,
                     data_source: str) -> plt.Figure:
    """Confusion matrix as counts (left) and row-normalised, i.e. recall per class (right)."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    _matrix_panel(axes[0], cm, class_names, "d", max(cm.max(), 1), "counts")
    _matrix_panel(axes[1], norm, class_names, ".2f", 1.0, "row-normalised (recall)")
    fig.suptitle(title(text, data_source))
    fig.tight_layout()
    return fig


def roc_figure(predictions: pd.DataFrame, class_names: Sequence[str],
               operating_threshold: dict[str, Any] | None, text: str,
               data_source: str) -> plt.Figure:
    """ROC curves from the predictions table of :func:`pneumocxr.evaluate.evaluate_checkpoint`.

    Left: normal vs pneumonia (p(pneumonia)) per split, with the operating point on each curve.
    Right (3-class only): one-vs-rest curve per class on test.
    """
    multi = len(class_names) > 2
    fig, axes = plt.subplots(1, 2 if multi else 1, figsize=(10.5 if multi else 5.5, 4.8),
                             squeeze=False)
    ax = axes[0, 0]
    t = None if not operating_threshold else operating_threshold.get("value")
    for split, df in predictions.groupby("split", sort=False):
        y = (df["label"].to_numpy() != 0).astype(int)
        if len(np.unique(y)) < 2:
            continue
        s = df["pneumonia_score"].to_numpy()
        fpr, tpr, _ = roc_curve(y, s)
        line, = ax.plot(fpr, tpr, label=f"{split} (AUROC {roc_auc_score(y, s):.3f}, n={len(y)})")
        if t is not None:
            pred = s >= t
            ax.plot([(pred & (y == 0)).sum() / (y == 0).sum()], [(pred & (y == 1)).sum() / y.sum()],
                    "o", color=line.get_color())
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("normal vs pneumonia" + (f"; dots: threshold {t:.3f}" if t is not None else ""))
    ax.legend(loc="lower right", fontsize=8)
    if multi:
        ax = axes[0, 1]
        test = predictions[predictions["split"] == "test"]
        y = test["label"].to_numpy()
        for i, name in enumerate(class_names):
            yi = (y == i).astype(int)
            if len(np.unique(yi)) < 2:
                continue
            s = test[f"prob_{name}"].to_numpy()
            fpr, tpr, _ = roc_curve(yi, s)
            ax.plot(fpr, tpr, label=f"{name} vs rest (AUROC {roc_auc_score(yi, s):.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("test, one-vs-rest per class")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title(text, data_source))
    fig.tight_layout()
    return fig


def reliability_figure(before: pd.DataFrame, after: pd.DataFrame, ece_before: float,
                       ece_after: float, temperature: float, text: str,
                       data_source: str) -> plt.Figure:
    """Reliability diagram: accuracy vs mean confidence per bin, before/after temperature scaling."""
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for bins, name, marker in ((before, f"T = 1 (ECE {ece_before:.3f})", "o"),
                               (after, f"T = {temperature:.2f} (ECE {ece_after:.3f})", "s")):
        used = bins[bins["count"] > 0]
        ax.plot(used["confidence"], used["accuracy"], marker=marker, label=name)
    ax.set_ylabel("accuracy in bin")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    width = float(before["bin_high"].iloc[0] - before["bin_low"].iloc[0])
    centers = (before["bin_low"] + before["bin_high"]) / 2
    axh.bar(centers - width / 4, before["count"], width=width / 2, label="T = 1")
    axh.bar(centers + width / 4, after["count"], width=width / 2, label="scaled")
    axh.set_xlabel("top-label confidence")
    axh.set_ylabel("images")
    axh.legend(fontsize=8)
    fig.suptitle(title(text, data_source))
    fig.tight_layout()
    return fig


def history_figure(history: pd.DataFrame, text: str, data_source: str,
                   best_epoch: int | None = None) -> plt.Figure:
    """Loss and accuracy per epoch (train and val) and val AUROC, best epoch marked."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    e = history["epoch"]
    for ax, key, name in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(e, history[f"train_{key}"], marker=".", label="train")
        ax.plot(e, history[f"val_{key}"], marker=".", label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
    axes[2].plot(e, history["val_auroc"], marker=".", color="C2", label="val AUROC")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("AUROC")
    axes[2].set_title("validation AUROC")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch is not None:
            ax.axvline(best_epoch, ls="--", color="grey", label=f"best epoch {best_epoch}")
        ax.legend(fontsize=8)
    fig.suptitle(title(text, data_source))
    fig.tight_layout()
    return fig


_METRIC_LABELS = {"auroc": "AUROC", "sensitivity": "sensitivity\n(op. threshold)",
                  "specificity": "specificity\n(op. threshold)"}


def comparison_figure(table: pd.DataFrame, text: str, data_source: str) -> plt.Figure:
    """Grouped bars with 95% CI whiskers: one panel per task, one bar group per metric.

    ``table`` columns: ``task, model, metric, value, ci_low, ci_high`` (``model`` is the bar
    label, e.g. ``resnet18 (128 px, weights none)``); optional ``converged`` (hatched bars
    marked "did not converge" where False) and ``rank`` (in the legend).
    """
    tasks = list(dict.fromkeys(table["task"]))
    archs = list(dict.fromkeys(table["arch"])) if "arch" in table else []
    n_models = max(table.groupby("task")["model"].nunique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.2 + 0.22 * n_models),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = table[table["task"] == task]
        metrics = list(dict.fromkeys(sub["metric"]))
        models = list(dict.fromkeys(sub["model"]))
        width = 0.8 / max(len(models), 1)
        for k, model in enumerate(models):
            rows = sub[sub["model"] == model].set_index("metric").reindex(metrics)
            x = np.arange(len(metrics)) + (k - (len(models) - 1) / 2) * width
            v = rows["value"].to_numpy(dtype=float)
            err = np.vstack([v - rows["ci_low"].to_numpy(dtype=float),
                             rows["ci_high"].to_numpy(dtype=float) - v])
            arch = rows["arch"].iloc[0] if "arch" in rows else None
            color = f"C{archs.index(arch) % 10}" if arch in archs else None
            converged = bool(rows["converged"].iloc[0]) if "converged" in rows else True
            label = model
            if not converged:
                label += ": did not converge (val AUROC CI reaches 0.5), not ranked"
            elif "rank" in rows and not pd.isna(rows["rank"].iloc[0]):
                label += f": rank {int(rows['rank'].iloc[0])} by AUROC"
            ax.bar(x, v, width=width, label=label, yerr=np.nan_to_num(err), capsize=3,
                   color=color, hatch=None if converged else "//",
                   alpha=1.0 if converged else 0.45,
                   edgecolor=None if converged else "black")
        ax.set_xticks(range(len(metrics)), [_METRIC_LABELS.get(m, m) for m in metrics])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("value (95% CI, patient bootstrap)")
        ax.set_title(f"task: {task}")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncol=1, frameon=False)
    fig.suptitle(title(text, data_source))
    fig.tight_layout()
    return fig
