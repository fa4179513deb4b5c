"""Figures of the explain stage (each function returns a matplotlib Figure; save with ``save``)."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from .common import save, title

__all__ = ["overlay_grid", "comparison_figure", "lung_share_figure", "faithfulness_figure",
           "save"]

METHOD_LABELS = {"occlusion": "occlusion", "gradcam": "Grad-CAM", "random": "random map"}
# occlusion: signed drop in probability (diverging); Grad-CAM: >= 0, scaled per image
CMAPS = {"occlusion": "RdBu_r", "gradcam": "inferno"}
MASK_COLOR = "#00e5ff"


def _scale(method: str, maps: np.ndarray) -> Normalize:
    if method == "occlusion":
        v = float(np.nanmax(np.abs(maps))) if maps.size else 1.0
        v = v if v > 0 else 1.0
        return Normalize(-v, v)
    return Normalize(0.0, 1.0)


def _draw(ax, image: np.ndarray, amap: np.ndarray | None, mask: np.ndarray | None,
          method: str | None, norm: Normalize | None) -> None:
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    if amap is not None:
        a = np.asarray(amap, dtype=np.float64)
        # opacity grows with |value|, so the X-ray stays readable where the map is ~0
        strength = np.clip(np.abs(a) / max(abs(norm.vmin), abs(norm.vmax)), 0.0, 1.0)
        ax.imshow(a, cmap=CMAPS[method], norm=norm, alpha=0.8 * strength)
    if mask is not None and mask.any():
        ax.contour(mask, levels=[0.5], colors=MASK_COLOR, linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])


def _colorbar_label(method: str) -> str:
    if method == "occlusion":
        return "drop in p(predicted class) when occluded"
    return "Grad-CAM (each map scaled to its maximum)"


def overlay_grid(images: np.ndarray, maps: np.ndarray, masks: np.ndarray, info: pd.DataFrame,
                 class_names: Sequence[str], method: str, *, task: str, arch: str,
                 data_source: str) -> plt.Figure:
    """Maps over the X-rays: one row per (true class, correct / wrong) group.

    ``info`` has one row per image (``group, rank, index, label, pred, p_pred``), aligned with
    ``images``/``maps``/``masks``. The lung mask is drawn as a cyan outline.
    """
    groups = [f"{c} / {k}" for c in class_names for k in ("correct", "wrong")]
    n_cols = max(1, int(info["rank"].max()) + 1 if len(info) else 1)
    norm = _scale(method, maps)
    fig, axes = plt.subplots(len(groups), n_cols, figsize=(2.3 * n_cols + 1.2, 2.4 * len(groups)),
                             squeeze=False)
    for r, group in enumerate(groups):
        rows = info[info["group"] == group]
        for c in range(n_cols):
            ax = axes[r, c]
            hit = rows[rows["rank"] == c]
            if hit.empty:
                ax.axis("off")
                if c == 0:
                    ax.text(0.5, 0.5, f"{group}:\nno images", ha="center", va="center",
                            transform=ax.transAxes, fontsize=9)
                continue
            i = int(hit.index[0])
            row = hit.iloc[0]
            _draw(ax, images[i], maps[i], masks[i], method, norm)
            ax.set_title(f"#{row['index']} true {class_names[row['label']]}\n"
                         f"pred {class_names[row['pred']]} p={row['p_pred']:.2f}", fontsize=8)
            if c == 0:
                ax.set_ylabel(group, fontsize=9)
    height = fig.get_figheight()
    fig.subplots_adjust(top=1.0 - 0.9 / height, bottom=0.2 / height, hspace=0.32, wspace=0.08)
    fig.colorbar(ScalarMappable(norm, CMAPS[method]), ax=axes, fraction=0.03, pad=0.02,
                 label=_colorbar_label(method))
    fig.suptitle(title(f"{METHOD_LABELS[method]} maps of the predicted class, {task} {arch} "
                       "(cyan: lung mask)", data_source))
    return fig


def comparison_figure(images: np.ndarray, maps: dict[str, np.ndarray], masks: np.ndarray,
                      info: pd.DataFrame, class_names: Sequence[str], *, task: str, arch: str,
                      data_source: str) -> plt.Figure:
    """Side by side, one correctly classified image per class: X-ray, occlusion, Grad-CAM."""
    picks = []
    for c, name in enumerate(class_names):
        rows = info[(info["label"] == c) & info["correct"]]
        rows = rows if not rows.empty else info[info["label"] == c]
        if not rows.empty:
            picks.append(int(rows.index[0]))
    methods = [m for m in ("occlusion", "gradcam") if m in maps]
    fig, axes = plt.subplots(max(1, len(picks)), 1 + len(methods),
                             figsize=(3.3 * (1 + len(methods)), 3.1 * max(1, len(picks))),
                             squeeze=False)
    for r, i in enumerate(picks):
        row = info.loc[i]
        _draw(axes[r, 0], images[i], None, masks[i], None, None)
        axes[r, 0].set_ylabel(f"{class_names[row['label']]}\n(#{row['index']}, predicted "
                              f"{class_names[row['pred']]} p={row['p_pred']:.2f})", fontsize=9)
        if r == 0:
            axes[r, 0].set_title("X-ray (cyan: lung mask)", fontsize=10)
        for k, method in enumerate(methods):
            amap = maps[method][i]
            if method == "gradcam":
                amap = amap / max(float(amap.max()), 1e-12)
            norm = _scale(method, maps[method][picks])
            _draw(axes[r, 1 + k], images[i], amap, masks[i], method, norm)
            if r == 0:
                axes[r, 1 + k].set_title(METHOD_LABELS[method], fontsize=10)
            fig.colorbar(ScalarMappable(norm, CMAPS[method]), ax=axes[r, 1 + k], fraction=0.046,
                         pad=0.03)
    if not picks:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center")
    fig.suptitle(title(f"Where the model looks: {' vs '.join(class_names)} ({task} {arch})",
                       data_source))
    fig.tight_layout()
    return fig


def _distribution_panel(ax, table: pd.DataFrame, sample: pd.DataFrame | None, mask: str,
                        class_names: Sequence[str]) -> None:
    series = [("occlusion", table, "occlusion"), ("gradcam", table, "Grad-CAM")]
    if sample is not None and not sample.empty:
        n = sample[(sample["mask"] == mask) & (sample["variant"] == "base")]["image"].nunique()
        series.append(("gradcam", sample, f"Grad-CAM, {n}-image sample"))
    width = 0.8 / len(series)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rng = np.random.default_rng(0)  # jitter only
    for s, (method, tab, label) in enumerate(series):
        sub = tab[(tab["mask"] == mask) & (tab["variant"] == "base") & (tab["method"] == method)]
        data, pos = [], []
        for c in range(len(class_names)):
            v = sub[sub["label"] == c]["share"].dropna().to_numpy()
            data.append(v)
            pos.append(c + (s - (len(series) - 1) / 2) * width)
        nonempty = [k for k, v in enumerate(data) if len(v)]
        if nonempty:
            ax.boxplot([data[k] for k in nonempty], positions=[pos[k] for k in nonempty],
                       widths=width * 0.8, showfliers=False, patch_artist=True,
                       boxprops={"facecolor": colors[s % len(colors)], "alpha": 0.35},
                       medianprops={"color": "black"})
        for k in nonempty:
            ax.scatter(pos[k] + rng.uniform(-width * 0.25, width * 0.25, len(data[k])), data[k],
                       s=9, color=colors[s % len(colors)], alpha=0.8,
                       label=label if k == nonempty[0] else None)
    base = table[(table["mask"] == mask) & (table["variant"] == "base")]
    for c in range(len(class_names)):
        area = base[base["label"] == c]["area"].mean()
        if np.isfinite(area):
            ax.hlines(area, c - 0.45, c + 0.45, colors="gray", linestyles="--",
                      label="mask area (uniform map)" if c == 0 else None)
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_xlabel("true class")
    ax.set_ylabel("share of positive attribution inside the lungs")
    ax.set_ylim(0, 1)
    ax.set_title(f"{mask.replace('_', '-')} lung mask")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)


def _robustness_panel(ax, table: pd.DataFrame, mask: str, class_names: Sequence[str]) -> None:
    variants = ["eroded", "base", "dilated"]
    markers = {"occlusion": "o", "gradcam": "s"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sub = table[table["mask"] == mask]
    for method in ("occlusion", "gradcam"):
        for c, name in enumerate(class_names):
            g = sub[(sub["method"] == method) & (sub["label"] == c)]
            means = [g[g["variant"] == v]["enrichment"].mean() for v in variants]
            ax.plot(range(3), means, marker=markers[method], color=colors[c % len(colors)],
                    linestyle="-" if method == "occlusion" else "--",
                    label=f"{name}, {METHOD_LABELS[method]}")
    ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(3), ["eroded", "as found", "dilated"])
    ax.set_xlabel(f"{mask.replace('_', '-')} lung mask")
    ax.set_ylabel("mean enrichment (share / mask area)")
    ax.set_title("robustness to the mask outline")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)


def lung_share_figure(table: pd.DataFrame, sample: pd.DataFrame | None,
                      class_names: Sequence[str], *, task: str, arch: str,
                      data_source: str) -> plt.Figure:
    """Per-image share of attribution inside the lung fields, per class, for both masks
    (top), and the mean enrichment with the masks eroded / dilated (bottom)."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 11))
    for k, mask in enumerate(("per_image", "template")):
        _distribution_panel(axes[0, k], table, sample, mask, class_names)
        _robustness_panel(axes[1, k], table, mask, class_names)
    fig.suptitle(title(f"Share of attribution inside the lung fields, {task} {arch}",
                       data_source))
    fig.tight_layout()
    return fig


def faithfulness_figure(faith: dict[str, Any], *, task: str, arch: str,
                        data_source: str) -> plt.Figure:
    """Mean deletion and insertion curves per method (AUC in the legend)."""
    fractions = np.asarray(faith["fractions"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for k, kind in enumerate(("deletion", "insertion")):
        ax = axes[k]
        for method in ("occlusion", "gradcam", "random"):
            if method not in faith:
                continue
            auc = faith[method][f"{kind}_auc"]
            ax.plot(fractions, faith[method]["mean_curves"][kind], marker=".",
                    linestyle=":" if method == "random" else "-",
                    label=f"{METHOD_LABELS[method]} (AUC {auc['mean']:.3f} +/- {auc['sd']:.3f})")
        ax.set_xlabel(f"share of pixels {'removed' if kind == 'deletion' else 'restored'}, "
                      "most important first")
        ax.set_ylabel("mean p(predicted class)")
        ax.set_ylim(0, 1.02)
        better = "lower" if kind == "deletion" else "higher"
        ax.set_title(f"{kind} ({better} AUC = more faithful)")
        ax.legend(fontsize=8)
    fig.suptitle(title(f"Faithfulness of the maps, {task} {arch}", data_source))
    fig.tight_layout()
    return fig
