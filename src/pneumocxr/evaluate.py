"""Evaluation of a trained classifier: metrics with patient-bootstrap CIs, thresholds, calibration.

What one evaluation reports per split (``test``, the carved ``val``, ``val_official``):

* accuracy; per-class precision, recall (sensitivity), F1 and specificity (one-vs-rest);
  AUROC (binary: p(pneumonia); 3-class: macro one-vs-rest) -- all with 95% bootstrap CIs that
  resample patients (:func:`pneumocxr.metrics.bootstrap_cis`);
* normal-vs-pneumonia sensitivity and specificity at 0.5 and at the *operating threshold*
  (chosen on ``val`` when training, stored in ``best.pt``; never on test). For the 3-class task
  this is the folded view: p(pneumonia) = p(bacteria) + p(virus) = 1 - p(normal);
* calibration: expected calibration error (top-label, equal-width bins) before and after
  temperature scaling (the temperature is fitted on ``val`` when training).

Metric values come from scikit-learn (``confusion_matrix``, ``roc_auc_score``); per-class rates
are read off one confusion matrix per bootstrap replicate so the CIs stay cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, roc_auc_score

from .calibration import expected_calibration_error, load_calibration, nll, reliability_bins
from .datasets import check_task, load_task_split
from .errors import InputError
from .inference import predict_logits
from .logits import pneumonia_score, probabilities
from .metrics import binary_rates, bootstrap_cis
from .settings import EvaluateSettings
from .utils import write_json

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- metrics


def _auroc(y: np.ndarray, probs: np.ndarray) -> float:
    if len(np.unique(y)) < probs.shape[1]:  # a class absent from this sample: undefined
        return float("nan")
    try:
        if probs.shape[1] == 2:
            return float(roc_auc_score(y, probs[:, 1]))
        return float(roc_auc_score(y, probs, multi_class="ovr", average="macro",
                                   labels=np.arange(probs.shape[1])))
    except ValueError:
        return float("nan")


def _counts(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion counts (rows true, columns predicted); equals sklearn's ``confusion_matrix``
    (tested) at a fraction of its per-call overhead, which matters in 1000 bootstrap replicates."""
    return np.bincount(y * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes).astype(float)


def _split_statistics(num_classes: int, thresholds: dict[str, float]):
    """The statistic evaluated on the full split and on every bootstrap replicate."""
    labels = np.arange(num_classes)

    def stats(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        cm = _counts(y, probs.argmax(axis=1), num_classes)
        n = cm.sum()
        tp = np.diag(cm)
        out = {"accuracy": tp.sum() / n if n else np.nan, "auroc": _auroc(y, probs)}
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / cm.sum(axis=0)
            recall = tp / cm.sum(axis=1)
            f1 = 2 * tp / (cm.sum(axis=0) + cm.sum(axis=1))
            tn = n - cm.sum(axis=0) - cm.sum(axis=1) + tp
            specificity = tn / (n - cm.sum(axis=1))
        for c in labels:
            out[f"precision/{c}"] = precision[c]
            out[f"recall/{c}"] = recall[c]
            out[f"f1/{c}"] = f1[c]
            out[f"specificity/{c}"] = specificity[c]
        y_bin = (y != 0).astype(int)
        score = pneumonia_score(probs)
        for name, t in thresholds.items():
            (tn_, fp_), (fn_, tp_) = _counts(y_bin, (score >= t).astype(int), 2)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"{name}/sensitivity"] = tp_ / (tp_ + fn_)
                out[f"{name}/specificity"] = tn_ / (tn_ + fp_)
                out[f"{name}/accuracy"] = (tp_ + tn_) / n
        return out

    return stats


def split_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    patients: np.ndarray,
    class_names: Sequence[str],
    *,
    temperature: float = 1.0,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    ece_bins: int = 15,
) -> dict[str, Any]:
    """All metrics of one split (see the module docstring), CIs resampling ``patients``.

    Predictions are the argmax of the logits (temperature does not change it); the
    normal-vs-pneumonia views use the temperature-scaled p(pneumonia).
    """
    labels = np.asarray(labels).astype(int)
    C = len(class_names)
    probs_raw = probabilities(logits)
    probs = probabilities(logits, temperature)
    stats = _split_statistics(C, {"at_half": 0.5, "at_operating": threshold})
    cis = bootstrap_cis(stats, [labels, probs], groups=patients, n_boot=n_boot, seed=seed)
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(labels, pred, labels=np.arange(C))
    out: dict[str, Any] = {
        "n_images": int(len(labels)),
        "n_patients": int(len(np.unique(patients))),
        "class_counts": {name: int((labels == i).sum()) for i, name in enumerate(class_names)},
        "accuracy": cis["accuracy"],
        "auroc": cis["auroc"],
        "per_class": {
            name: {m: cis[f"{m}/{i}"] for m in ("precision", "recall", "f1", "specificity")}
            for i, name in enumerate(class_names)
        },
        "confusion": {t: {p: int(cm[i, j]) for j, p in enumerate(class_names)}
                      for i, t in enumerate(class_names)},
        "calibration": {
            "ece_before": expected_calibration_error(probs_raw, labels, ece_bins),
            "ece_after": expected_calibration_error(probs, labels, ece_bins),
            "nll_before": nll(logits, labels, 1.0),
            "nll_after": nll(logits, labels, temperature),
        },
    }
    for name, t in (("at_half", 0.5), ("at_operating", threshold)):
        out[name] = {"threshold": float(t)}
        for m in ("sensitivity", "specificity", "accuracy"):
            out[name][m] = cis[f"{name}/{m}"]
    if C > 2:  # 3-class predictions folded into normal vs pneumonia (argmax decision)
        y_bin = (labels != 0).astype(int)
        p_bin = (pred != 0).astype(int)
        fcm = confusion_matrix(y_bin, p_bin, labels=[0, 1])
        rates = binary_rates(y_bin, p_bin)
        out["folded"] = {
            "accuracy": rates["accuracy"], "sensitivity": rates["sensitivity"],
            "specificity": rates["specificity"],
            "confusion": {t: {p: int(fcm[i, j]) for j, p in enumerate(("normal", "pneumonia"))}
                          for i, t in enumerate(("normal", "pneumonia"))},
        }
    return out


# ----------------------------------------------------------------------------- whole evaluation


def evaluate_checkpoint(
    model_path: str | Path,
    processed_dir: str | Path,
    *,
    task: str,
    calibration: Mapping[str, Any] | str | Path | None = None,
    settings: EvaluateSettings | Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Evaluate ``best.pt`` on the splits of ``settings`` (params ``evaluate``):
    ``(metrics, predictions)``.

    ``calibration`` is the model's ``calibration.json`` (or its content): the temperature and
    the operating threshold fitted on val; without it, T = 1 and the threshold is 0.5.
    A split missing from the prepared folder is a FileNotFoundError, except ``val_official``
    (absent for sources without an official val folder), which is skipped with a warning.
    """
    from .models import load_model  # local: models imports torchvision (slow) only when used

    s = EvaluateSettings.from_params(settings)
    splits, n_boot, ece_bins, batch_size = s.splits, s.n_boot, s.ece_bins, s.batch_size
    class_names = check_task(task)
    model, meta = load_model(model_path, class_names=list(class_names))
    if meta.get("task") not in (None, task):
        raise InputError(f"{model_path}: checkpoint was trained for task {meta['task']!r}, "
                         f"not {task!r}")
    if isinstance(calibration, (str, Path)):
        calibration = load_calibration(calibration)
    calibration = dict(calibration or {"temperature": 1.0,
                                       "operating_threshold": {"value": 0.5, "rule": "none"}})
    temperature = float(calibration["temperature"])
    threshold = float(calibration["operating_threshold"]["value"])
    input_size = int(meta["input_size"])
    precision = meta.get("precision", "fp32")
    channels_last = bool(meta.get("channels_last", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    metrics: dict[str, Any] = {
        "task": task, "arch": meta["arch"], "class_names": list(class_names),
        "data_source": meta.get("data_source", "unknown"), "input_size": input_size,
        "weights": meta.get("init", "none"), "best_epoch": meta.get("best_epoch"),
        # train.joint_head: this binary model is the three-class network read in two groups
        "folded_from": meta.get("folded_from"),
        "temperature": temperature, "operating_threshold": calibration["operating_threshold"],
        "precision": precision, "device": next(model.parameters()).device.type,
        "threads": torch.get_num_threads(),
        "n_boot": n_boot, "ci_level": 0.95,
    }
    rows = []
    for split in splits:
        try:
            ds, source = load_task_split(processed_dir, split, task)
        except FileNotFoundError:
            if split == "val_official":
                log.warning("%s: no val_official split; skipped", processed_dir)
                continue
            raise
        if source != metrics["data_source"]:
            log.warning("%s: data_source %s differs from the model's training data (%s)",
                        processed_dir, source, metrics["data_source"])
        logits = predict_logits(model, ds, normalization=meta["normalization"],
                                batch_size=batch_size, input_size=input_size,
                                precision=precision, channels_last=channels_last,
                                progress=progress)
        patients = ds.patients if ds.patients is not None else np.arange(len(ds))
        metrics[split] = split_metrics(logits, ds.labels, patients, class_names,
                                       temperature=temperature, threshold=threshold,
                                       n_boot=n_boot, seed=seed, ece_bins=ece_bins)
        probs = probabilities(logits, temperature)
        df = pd.DataFrame({"split": split, "index": np.arange(len(ds)),
                           "file": ds.meta["file"].to_numpy() if ds.meta is not None else "",
                           "patient": patients, "label": ds.labels,
                           "label_name": np.array(class_names)[ds.labels]})
        for i, name in enumerate(class_names):
            df[f"logit_{name}"] = logits[:, i]
        for i, name in enumerate(class_names):
            df[f"prob_{name}"] = probs[:, i]
        df["pred"] = probs.argmax(axis=1)
        df["pneumonia_score"] = pneumonia_score(probs)
        df["pred_operating"] = (df["pneumonia_score"] >= threshold).astype(int)
        rows.append(df)
        log.info("%s %s %s: accuracy %.3f auroc %.3f (n=%d)", task, meta["arch"], split,
                 metrics[split]["accuracy"]["value"], metrics[split]["auroc"]["value"], len(ds))
    if "val" in metrics and "test" in metrics:
        v, t = metrics["val"]["at_operating"], metrics["test"]["at_operating"]
        metrics["threshold_transfer"] = {
            "threshold": threshold,
            "val_sensitivity": v["sensitivity"]["value"], "test_sensitivity": t["sensitivity"]["value"],
            "val_specificity": v["specificity"]["value"], "test_specificity": t["specificity"]["value"],
            "delta_sensitivity": t["sensitivity"]["value"] - v["sensitivity"]["value"],
            "delta_specificity": t["specificity"]["value"] - v["specificity"]["value"],
        }
    return metrics, pd.concat(rows, ignore_index=True)


FIGURES = ("confusion", "roc", "reliability", "curves")


def run_evaluation(
    model_path: str | Path,
    processed_dir: str | Path,
    outputs: Mapping[str, str | Path],
    *,
    task: str,
    calibration: str | Path | Mapping[str, Any] | None = None,
    history_path: str | Path | None = None,
    params: EvaluateSettings | Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """The evaluate stage: metrics JSON, predictions CSV and the figures of one task/arch.

    ``outputs`` keys: ``metrics`` (JSON), ``predictions`` (CSV), ``confusion``, ``roc``,
    ``reliability``, ``curves`` (PNG; ``curves`` needs ``history_path``) and, for the
    three-class task, ``folded`` (PNG: predictions folded into normal vs pneumonia). Keys not
    given are not written; an unknown key is a ValueError.

    ``params`` is the ``evaluate`` section: ``n_boot``, ``ece_bins``, ``batch_size``, ``splits``.
    """
    from .plots import classify as plots  # matplotlib only when figures are drawn

    s = EvaluateSettings.from_params(params)
    known = {"metrics", "predictions", "folded", *FIGURES}
    unknown = set(outputs) - known
    if unknown:
        raise InputError(f"unknown evaluate outputs {sorted(unknown)}; known: {sorted(known)}")
    if "folded" in outputs and task != "three_class":
        raise InputError("output 'folded' (three-class predictions folded into normal vs "
                         "pneumonia) only exists for task three_class")
    metrics, preds = evaluate_checkpoint(model_path, processed_dir, task=task,
                                         calibration=calibration, settings=s, seed=seed,
                                         progress=progress)
    if "metrics" in outputs:
        write_json(metrics, outputs["metrics"])
    if "predictions" in outputs:
        Path(outputs["predictions"]).parent.mkdir(parents=True, exist_ok=True)
        preds.to_csv(outputs["predictions"], index=False, float_format="%.6g")
    src = metrics["data_source"]
    label = f"{task} {metrics['arch']}"
    class_names = metrics["class_names"]
    test = preds[preds["split"] == "test"]
    if "confusion" in outputs:
        cm = np.array([[metrics["test"]["confusion"][t][q] for q in class_names]
                       for t in class_names])
        plots.save(plots.confusion_figure(cm, class_names, f"{label}: test confusion matrix", src),
                   outputs["confusion"])
    if "folded" in outputs:
        f = metrics["test"]["folded"]["confusion"]
        cm = np.array([[f[t][q] for q in ("normal", "pneumonia")] for t in ("normal", "pneumonia")])
        plots.save(plots.confusion_figure(
            cm, ["normal", "pneumonia"], f"{label}: test predictions folded to normal vs pneumonia",
            src), outputs["folded"])
    if "roc" in outputs:
        plots.save(plots.roc_figure(preds, class_names, metrics["operating_threshold"],
                                    f"{label}: ROC curves", src), outputs["roc"])
    if "reliability" in outputs:
        probs_cols = [f"logit_{c}" for c in class_names]
        logits = test[probs_cols].to_numpy()
        y = test["label"].to_numpy()
        T = metrics["temperature"]
        before = reliability_bins(probabilities(logits), y, s.ece_bins)
        after = reliability_bins(probabilities(logits, T), y, s.ece_bins)
        cal = metrics["test"]["calibration"]
        plots.save(plots.reliability_figure(before, after, cal["ece_before"], cal["ece_after"], T,
                                            f"{label}: reliability on test", src),
                   outputs["reliability"])
    if "curves" in outputs:
        if history_path is None:
            raise InputError("output 'curves' needs the training history (input history)")
        hist = pd.read_csv(history_path)
        plots.save(plots.history_figure(hist, f"{label}: training curves", src,
                                        best_epoch=metrics.get("best_epoch")), outputs["curves"])
    return metrics
