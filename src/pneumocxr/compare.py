"""The model comparison (the study's Figure 3): architectures side by side with their CIs.

Reads the evaluate stage's ``metrics.json`` of every task and architecture; each bar names its
input size and starting weights, so a reduced-size comparison is labelled as such. A model
whose val AUROC cannot be told from chance (its 95% patient-bootstrap CI reaches 0.5) did not
converge: its bars are hatched and marked, and it is not ranked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from .errors import InputError, MissingInputError


COMPARE_METRICS = ("accuracy", "auroc", "sensitivity", "specificity")
#: the AUROC of a score that knows nothing about the label
CHANCE_AUROC = 0.5


def _weights_label(weights: str | None) -> str:
    if weights in (None, "none"):
        return "from scratch"
    if weights == "imagenet":
        return "ImageNet"
    return "from binary"


def comparison_table(metrics_paths: Sequence[str | Path], split: str = "test") -> pd.DataFrame:
    """Long table (task, arch, model, metric, value, ci_low, ci_high, ...) of metrics JSONs.

    ``sensitivity``/``specificity`` are normal vs pneumonia at the operating threshold (folded
    for the 3-class task). ``model`` labels each bar with the input size and weights, so a
    reduced-size comparison is visibly labelled as such. ``val_auroc`` (with its CI) decides
    ``converged``: the CI's lower end above chance. ``rank`` orders the converged models of a
    task by ``split`` AUROC (1 = best); a model that did not converge has none.
    """
    rows = []
    for path in metrics_paths:
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"{path}: metrics file missing; run the evaluate stage first")
        m = json.loads(path.read_text())
        for needed in dict.fromkeys((split, "val")):
            if needed not in m:
                raise InputError(f"{path}: no {needed!r} section; rerun evaluate")
        s, val_auroc = m[split], m["val"]["auroc"]
        converged = bool(val_auroc["ci_low"] > CHANCE_AUROC)
        label = f"{m['arch']} ({m['input_size']} px, {_weights_label(m.get('weights'))})"
        values = {"accuracy": s["accuracy"], "auroc": s["auroc"],
                  "sensitivity": s["at_operating"]["sensitivity"],
                  "specificity": s["at_operating"]["specificity"]}
        for metric in COMPARE_METRICS:
            v = values[metric]
            rows.append({"task": m["task"], "arch": m["arch"], "model": label, "metric": metric,
                         "value": v["value"], "ci_low": v["ci_low"], "ci_high": v["ci_high"],
                         "input_size": m["input_size"], "weights": m.get("weights"),
                         "data_source": m.get("data_source", "unknown"), "split": split,
                         "val_auroc": val_auroc["value"],
                         "val_auroc_ci_low": val_auroc["ci_low"],
                         "val_auroc_ci_high": val_auroc["ci_high"], "converged": converged})
    if not rows:
        raise InputError("no metrics files to compare")
    table = pd.DataFrame(rows)
    auroc = table[(table["metric"] == "auroc") & table["converged"]]
    ranks = auroc.groupby("task")["value"].rank(ascending=False, method="min")
    rank_of = {(t, m): int(r) for t, m, r in zip(auroc["task"], auroc["model"], ranks)}
    table["rank"] = [rank_of.get((t, m)) for t, m in zip(table["task"], table["model"])]
    table["rank"] = table["rank"].astype("Int64")
    return table


def compare_models(metrics_paths: Sequence[str | Path], figure_path: str | Path,
                   table_path: str | Path | None = None, split: str = "test",
                   split_label: str | None = None) -> pd.DataFrame:
    """The model-comparison chart (the study's Figure 3) and its table across architectures.

    ``split_label`` says what ``split`` is in the title (params ``report.test_label``: e.g. an
    in-distribution dev test rather than the official test).
    """
    from .plots import classify as plots

    table = comparison_table(metrics_paths, split)
    sources = sorted(set(table["data_source"]))
    name = f"{split} ({split_label})" if split_label else split
    fig = plots.comparison_figure(table, f"Model comparison on {name}, 95% CI",
                                  sources[0] if len(sources) == 1 else "+".join(sources))
    plots.save(fig, figure_path)
    if table_path is not None:
        Path(table_path).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(table_path, index=False, float_format="%.6g")
    return table
