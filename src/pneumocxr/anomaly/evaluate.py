"""The ``evaluate_anomaly`` stage: fit the score on the normal training images, choose the
threshold on val (EER), report the test metrics with CIs, and draw the figures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ..checkpoint import atomic_save
from ..data.arrays import SplitData, load_split
from ..errors import InputError
from ..models import autoencoder_input, load_autoencoder
from ..settings import AnomalyEvaluateSettings, ScoreSettings, anomaly_sections
from ..utils import set_determinism, write_json
from .detect import (anomaly_metrics, baseline_score, choose_threshold, pick_examples,
                     versus_baseline)
from .scores import compute_scores, create_score, fit_score, forward_batch

log = logging.getLogger(__name__)


def _normal_images(split: SplitData) -> np.ndarray:
    return np.asarray(split.images[split.y_binary == 0])


def _check_levels(score: ScoreSettings, depth: int) -> None:
    """The score's encoder blocks must exist in the trained model (``depth`` blocks)."""
    for lv in [score.level, *(score.levels or [])]:
        if not -depth <= lv < depth:
            raise InputError(f"anomaly.score: encoder block {lv} does not exist; the autoencoder "
                             f"has {depth} blocks (use 0..{depth - 1}, or -1 for the deepest)")


def run_anomaly_evaluation(
    model_path: str | Path,
    processed_dir: str | Path,
    outputs: Mapping[str, str | Path],
    *,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """The ``evaluate_anomaly`` stage: score, threshold on val (EER), test metrics, figures.

    ``outputs`` keys: ``metrics`` (JSON), ``scores`` (CSV of val and test scores), and the
    figures ``reconstructions``, ``histogram``, ``roc`` (each optional except ``metrics``).
    The score (``anomaly.score``) is fitted on the normal ``train`` images; the threshold is
    chosen on ``val`` (normal + pneumonia) and never looks at ``test``.
    """
    from ..plots import anomaly as plots
    from ..plots.common import save

    params = anomaly_sections(params)
    s = ScoreSettings.from_params(params.get("score"))
    e = AnomalyEvaluateSettings.from_params(params.get("evaluate"))
    model, meta = load_autoencoder(model_path, device)
    _check_levels(s, len(meta["model"]["channels"]))
    variant, size = meta["variant"], meta["model"]["input_size"]
    splits = {name: load_split(processed_dir, name, variant) for name in ("train", "val", "test")}
    data_source = splits["test"].data_source
    scorer = create_score(**s.as_dict())
    set_determinism(seed)
    fit_score(scorer, model, autoencoder_input(_normal_images(splits["train"]), size), e.batch_size,
              progress)
    scores, xs = {}, {}
    for name in ("val", "test"):
        xs[name] = autoencoder_input(splits[name].images, size)
        scores[name] = compute_scores(scorer, model, xs[name], e.batch_size, progress)
    y_val, y_test = splits["val"].y_binary, splits["test"].y_binary
    threshold = choose_threshold(y_val, scores["val"], e.eer_tolerance)
    base = None
    if e.baseline:
        # the study's row: its reconstruction error, the image mean, its own val EER threshold
        scorer_b = baseline_score(e.baseline)
        base = {name: compute_scores(scorer_b, model, xs[name], e.batch_size, progress)
                for name in ("val", "test")}
        base_threshold = choose_threshold(y_val, base["val"], e.eer_tolerance)
    if outputs.get("score_state"):
        # what `pneumocxr predict` needs to score new images the same way: the score's params,
        # its state fitted on the normal training images (empty for reconstruction errors)
        # and the threshold; and the baseline's, for the external evaluation's study row
        atomic_save({"score": s.as_dict(), "state": scorer.state_dict(), "threshold": threshold,
                     "baseline": None if base is None else {"method": e.baseline,
                                                            "threshold": base_threshold}},
                    outputs["score_state"])
    test = anomaly_metrics(y_test, scores["test"], threshold["value"], splits["test"].patients,
                           prevalence=e.prevalence, n_boot=e.n_boot, seed=seed)
    pred_test = scores["test"] >= threshold["value"]
    sub = splits["test"].meta["subtype"].to_numpy()
    by_subtype = {st: {"n": int((sub == st).sum()),
                       "flagged": float(pred_test[sub == st].mean())}
                  for st in sorted(set(sub))}
    val_auroc = float(roc_auc_score(y_val, scores["val"]))
    metrics = {
        "data_source": data_source, "score": {**s.as_dict(), "label": scorer.label}, "variant": variant,
        "model": {**meta["model"], "best_epoch": meta["best_epoch"],
                  "val_mse": meta["val_mse"], "n_train_normal": meta["n_train_normal"]},
        "threshold": threshold,
        "val": {"n": int(len(y_val)), "prevalence": float(y_val.mean()), "auroc": val_auroc},
        "test": test,
        "test_flagged_by_subtype": by_subtype,
        "baseline": None if base is None else {
            "val_auroc": float(roc_auc_score(y_val, base["val"])),
            "test": versus_baseline(y_test, scores["test"], base["test"], base_threshold["value"],
                                    splits["test"].patients, method=e.baseline,
                                    prevalence=e.prevalence, n_boot=e.n_boot, seed=seed)},
        "note": "score >= threshold flags pneumonia; threshold chosen on val (EER), never on "
                "test; CIs: 95% percentile bootstrap over patients",
    }
    write_json(metrics, outputs["metrics"])
    log.info("anomaly (%s): threshold %.4g (val FPR %.3f FNR %.3f, gap %.4f, tolerance %s); "
             "test AUROC %.3f sensitivity %.3f specificity %.3f", scorer.name,
             threshold["value"], threshold["val_fpr"], threshold["val_fnr"], threshold["gap"],
             "met" if threshold["tolerance_met"] else "not met", test["auroc"]["value"],
             test["sensitivity"]["value"], test["specificity"]["value"])
    if base is not None:
        b = metrics["baseline"]["test"]
        log.info("baseline (%s, image mean): test AUROC %.3f sensitivity %.3f specificity %.3f; "
                 "AUROC difference %+.3f [%+.3f, %+.3f]", e.baseline, b["auroc"]["value"],
                 b["sensitivity"]["value"], b["specificity"]["value"],
                 b["auroc_difference"]["value"], b["auroc_difference"]["ci_low"],
                 b["auroc_difference"]["ci_high"])

    if outputs.get("scores"):
        rows = []
        for name in ("val", "test"):
            d = splits[name]
            rows.append(pd.DataFrame({
                "split": name, "index": np.arange(len(d)), "file": d.meta["file"],
                "patient": d.patients, "label": d.meta["label"], "subtype": d.meta["subtype"],
                "score": scores[name], "flagged": scores[name] >= threshold["value"],
                **({} if base is None else {"baseline_score": base[name]})}))
        path = Path(outputs["scores"])
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.concat(rows).to_csv(path, index=False, float_format="%.6g")
    label = scorer.label
    if outputs.get("reconstructions"):
        idx = pick_examples(y_test, e.n_examples, seed)
        fw = forward_batch(model, xs["test"][idx], recon_feats=scorer.needs_recon_feats)
        amap = scorer.map(fw)  # None for scores of the whole image (latent densities)
        fig = plots.reconstruction_grid(
            fw.x.cpu().numpy()[:, 0], fw.recon.cpu().numpy()[:, 0], y_test[idx],
            scores["test"][idx], threshold["value"], data_source,
            anomaly_maps=None if amap is None else amap.cpu().numpy()[:, 0],
            map_label=scorer.map_label)
        save(fig, outputs["reconstructions"])
    if outputs.get("histogram"):
        save(plots.score_histogram(scores["test"], y_test, threshold["value"], data_source,
                                   score_label=label, split="test"), outputs["histogram"])
    if outputs.get("roc"):
        save(plots.roc_figure({"val": (y_val, scores["val"]), "test": (y_test, scores["test"])},
                              threshold["value"], data_source, score_label=label),
             outputs["roc"])
    return metrics
