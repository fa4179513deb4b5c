"""Figures of the prepare stage: the data overview (examples raw vs CLAHE, counts per split)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError
from .common import plt, save, title

CLASS_COLORS = {"normal": "tab:green", "bacteria": "tab:orange", "virus": "tab:purple",
                "pneumonia": "tab:red"}


def plot_data_overview(
    examples: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    counts: Mapping[str, Mapping[str, int]],
    data_source: str,
    path: str | Path,
) -> Path:
    """Example images per class (each as a raw / CLAHE pair) above class counts per split.

    Args:
        examples: ``{class: [(raw, clahe), ...]}``, uint8 2-D images; one row per class.
        counts: ``{split: {class: n}}`` for the bar chart.
        data_source: ``kermany``, ``medmnist`` or ``demo`` (demo is titled synthetic).
        path: PNG to write.
    """
    classes = list(examples)
    if not classes:
        raise InputError("plot_data_overview needs at least one class with example images")
    n_pairs = max(len(v) for v in examples.values())
    n_cols = 2 * n_pairs
    fig = plt.figure(figsize=(2.1 * max(n_cols, 4), 2.1 * len(classes) + 3.4))
    grid = fig.add_gridspec(len(classes) + 1, n_cols,
                            height_ratios=[1.0] * len(classes) + [1.5], hspace=0.35)
    for r, name in enumerate(classes):
        for p in range(n_pairs):
            for k, kind in enumerate(("raw", "CLAHE")):
                ax = fig.add_subplot(grid[r, 2 * p + k])
                ax.set_xticks([])
                ax.set_yticks([])
                if p < len(examples[name]):
                    ax.imshow(examples[name][p][k], cmap="gray", vmin=0, vmax=255)
                else:
                    ax.set_axis_off()
                if r == 0:
                    ax.set_title(f"{kind} #{p + 1}", fontsize=9)
                if p == 0 and k == 0:
                    ax.set_ylabel(name, fontsize=10, color=CLASS_COLORS.get(name, "black"))

    ax = fig.add_subplot(grid[len(classes), :])
    splits = list(counts)
    x = np.arange(len(splits))
    width = 0.8 / len(classes)
    for j, name in enumerate(classes):
        values = [counts[s].get(name, 0) for s in splits]
        bars = ax.bar(x + (j - (len(classes) - 1) / 2) * width, values, width, label=name,
                      color=CLASS_COLORS.get(name))
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(x, splits)
    ax.set_xlabel("split")
    ax.set_ylabel("images")
    ax.legend(title="class", fontsize=8)
    ax.margins(y=0.15)
    fig.suptitle(title("Data overview: examples (preprocessed, raw vs CLAHE) and class counts",
                       data_source), fontsize=11)
    return save(fig, path)
