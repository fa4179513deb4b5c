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

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve
from tqdm.auto import tqdm

from .datasets import ArrayDataset, check_task, iterate_batches, load_task_split, to_float
from .metrics import binary_rates, bootstrap_cis, youden_threshold
from .utils import jsonable

log = logging.getLogger(__name__)

THRESHOLD_RULES = ("youden", "sensitivity")


# ----------------------------------------------------------------------------- inference


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``bf16`` -> torch.bfloat16, ``fp16`` -> torch.float16 (autocast), ``fp32`` -> None."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise ValueError(f"precision must be fp32, bf16 or fp16 (auto is resolved by train), "
                     f"got {precision!r}")


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    data: ArrayDataset | np.ndarray,
    *,
    normalization: dict[str, Any],
    batch_size: int = 128,
    input_size: int | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Logits (N, C) float32 of ``model`` (eval mode) on uint8 images (N, H, W).

    Images are scaled to [0, 1], resized to ``input_size`` when it differs from theirs and
    normalised with ``normalization`` (``{"mean": [...], "std": [...]}``, the checkpoint's
    ``meta["normalization"]``).
    """
    from .models import normalize

    if isinstance(data, np.ndarray):
        data = ArrayDataset(data, np.zeros(len(data), dtype=np.int64), ["any"], name="images")
    device = next(model.parameters()).device
    amp = autocast_dtype(precision, device)
    was_training = model.training
    model.eval()
    out = []
    for xb, _ in tqdm(iterate_batches(data, batch_size), total=-(-len(data) // batch_size),
                      desc=f"predict {data.name}", disable=not progress, leave=False):
        x = normalize(to_float(xb, input_size).to(device), normalization)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
        out.append(logits.float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- calibration


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature``."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T minimising the NLL of ``softmax(logits / T)`` (Guo et al., 2017).

    A bounded 1-D search over log T (deterministic). Fit it on validation data only.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if len(logits) == 0:
        raise ValueError("fit_temperature needs at least one sample")
    res = minimize_scalar(lambda lt: nll(logits, labels, float(np.exp(lt))),
                          bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # bin b holds confidences in (b/n, (b+1)/n]; confidence 0 goes to bin 0
    return np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Per confidence bin: range, count, mean top-label confidence and accuracy."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs = np.asarray(probs)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(float)
    b = _bin_index(conf, n_bins)
    rows = []
    for i in range(n_bins):
        m = b == i
        rows.append({"bin_low": i / n_bins, "bin_high": (i + 1) / n_bins, "count": int(m.sum()),
                     "confidence": float(conf[m].mean()) if m.any() else float("nan"),
                     "accuracy": float(correct[m].mean()) if m.any() else float("nan")})
    return pd.DataFrame(rows)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum_b (n_b / N) |accuracy_b - confidence_b| over equal-width top-label bins."""
    bins = reliability_bins(probs, labels, n_bins)
    used = bins[bins["count"] > 0]
    gap = (used["accuracy"] - used["confidence"]).abs()
    return float((used["count"] * gap).sum() / used["count"].sum())


# ----------------------------------------------------------------------------- thresholds


def pneumonia_score(probs: np.ndarray) -> np.ndarray:
    """p(pneumonia) = 1 - p(normal); class 0 is normal in both tasks."""
    return 1.0 - np.asarray(probs)[:, 0]


def choose_threshold(y_true: np.ndarray, score: np.ndarray, rule: str = "youden",
                     target_sensitivity: float = 0.95) -> dict[str, Any]:
    """Operating threshold on p(pneumonia) from validation data (a score >= it is positive).

    Rules: ``youden`` maximises sensitivity + specificity - 1; ``sensitivity`` is the highest
    threshold whose sensitivity reaches ``target_sensitivity`` (the most specific such point).
    """
    y_true = np.asarray(y_true).astype(int)
    if len(np.unique(y_true)) < 2:
        raise ValueError("choosing a threshold needs normal and pneumonia images in the "
                         "validation split")
    if rule == "youden":
        t = youden_threshold(y_true, score)["threshold"]
    elif rule == "sensitivity":
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
        fpr, tpr, thr = roc_curve(y_true, score)
        ok = np.flatnonzero((tpr >= target_sensitivity) & np.isfinite(thr))
        t = float(thr[ok[0]]) if len(ok) else float(np.min(score))
    else:
        raise ValueError(f"threshold rule must be one of {THRESHOLD_RULES}, got {rule!r}")
    rates = binary_rates(y_true, (np.asarray(score) >= t).astype(int))
    return {"value": float(t), "rule": rule,
            "target_sensitivity": float(target_sensitivity) if rule == "sensitivity" else None,
            "val_sensitivity": rates["sensitivity"], "val_specificity": rates["specificity"]}


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
    arch: str | None = None,
    splits: Sequence[str] = ("val", "test", "val_official"),
    n_boot: int = 1000,
    seed: int = 0,
    ece_bins: int = 15,
    batch_size: int = 128,
    progress: bool = False,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Evaluate ``best.pt`` on ``splits`` of the prepared data: ``(metrics, predictions)``.

    ``val`` must be among the splits: the threshold transfer compares it with ``test``.
    A split missing from the prepared folder is a FileNotFoundError, except ``val_official``
    (absent for sources without an official val folder), which is skipped with a warning.
    """
    from .models import load_model  # local: models imports torchvision (slow) only when used

    class_names = check_task(task)
    model, meta = load_model(model_path, arch=arch, class_names=list(class_names))
    if meta.get("task") not in (None, task):
        raise ValueError(f"{model_path}: checkpoint was trained for task {meta['task']!r}, "
                         f"not {task!r}")
    temperature = float(meta.get("temperature", 1.0))
    threshold = float(meta.get("operating_threshold", {}).get("value", 0.5))
    input_size = int(meta["input_size"])
    precision = meta.get("precision", "fp32")
    channels_last = bool(meta.get("channels_last", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    metrics: dict[str, Any] = {
        "task": task, "arch": meta["arch"], "class_names": list(class_names),
        "data_source": meta.get("data_source", "unknown"), "input_size": input_size,
        "weights": meta.get("init", "none"), "best_epoch": meta.get("best_epoch"),
        "temperature": temperature, "operating_threshold": meta.get("operating_threshold"),
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


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON (NaN -> null, so every reader accepts it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(obj), indent=2) + "\n")
    return path


FIGURES = ("confusion", "roc", "reliability", "curves")


def run_evaluation(
    model_path: str | Path,
    processed_dir: str | Path,
    outputs: dict[str, str | Path],
    *,
    task: str,
    arch: str | None = None,
    history_path: str | Path | None = None,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """The evaluate stage: metrics JSON, predictions CSV and the figures of one task/arch.

    ``outputs`` keys: ``metrics`` (JSON), ``predictions`` (CSV), ``confusion``, ``roc``,
    ``reliability``, ``curves`` (PNG; ``curves`` needs ``history_path``) and, for the 3-class
    task, ``folded`` (PNG: predictions folded into normal vs pneumonia). Keys not given are not
    written; an unknown key is a ValueError.

    ``params`` is the ``evaluate`` section: ``n_boot``, ``ece_bins``, ``batch_size``, ``splits``.
    """
    from .plots import classify as plots  # matplotlib only when figures are drawn

    p = {"n_boot": 1000, "ece_bins": 15, "batch_size": 128,
         "splits": ["val", "test", "val_official"]}
    unknown_params = set(params or {}) - set(p)
    if unknown_params:
        raise ValueError(f"evaluate params: unknown keys {sorted(unknown_params)}; known: "
                         f"{sorted(p)}")
    p.update(params or {})
    known = {"metrics", "predictions", "folded", *FIGURES}
    unknown = set(outputs) - known
    if unknown:
        raise ValueError(f"unknown evaluate outputs {sorted(unknown)}; known: {sorted(known)}")
    if "folded" in outputs and task != "3class":
        raise ValueError("output 'folded' (3-class predictions folded into normal vs pneumonia) "
                         "only exists for task 3class")
    if "val" not in p["splits"] or "test" not in p["splits"]:
        raise ValueError(f"evaluate.splits must include val and test, got {p['splits']}")
    if int(p["n_boot"]) < 10:
        raise ValueError(f"evaluate.n_boot must be >= 10, got {p['n_boot']}")
    if not 1 <= int(p["ece_bins"]) <= 100:
        raise ValueError(f"evaluate.ece_bins must be in [1, 100], got {p['ece_bins']}")
    metrics, preds = evaluate_checkpoint(
        model_path, processed_dir, task=task, arch=arch, splits=p["splits"],
        n_boot=int(p["n_boot"]), seed=seed, ece_bins=int(p["ece_bins"]),
        batch_size=int(p["batch_size"]), progress=progress)
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
        before = reliability_bins(probabilities(logits), y, int(p["ece_bins"]))
        after = reliability_bins(probabilities(logits, T), y, int(p["ece_bins"]))
        cal = metrics["test"]["calibration"]
        plots.save(plots.reliability_figure(before, after, cal["ece_before"], cal["ece_after"], T,
                                            f"{label}: reliability on test", src),
                   outputs["reliability"])
    if "curves" in outputs:
        if history_path is None:
            raise ValueError("output 'curves' needs the training history (input history)")
        hist = pd.read_csv(history_path)
        plots.save(plots.history_figure(hist, f"{label}: training curves", src,
                                        best_epoch=metrics.get("best_epoch")), outputs["curves"])
    return metrics


COMPARE_METRICS = ("accuracy", "auroc", "sensitivity", "specificity")


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
    reduced-size comparison is visibly labelled as such.
    """
    rows = []
    for path in metrics_paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: metrics file missing; run the evaluate stage first")
        m = json.loads(path.read_text())
        if split not in m:
            raise ValueError(f"{path}: no {split!r} section; rerun evaluate")
        s = m[split]
        label = f"{m['arch']} ({m['input_size']} px, {_weights_label(m.get('weights'))})"
        values = {"accuracy": s["accuracy"], "auroc": s["auroc"],
                  "sensitivity": s["at_operating"]["sensitivity"],
                  "specificity": s["at_operating"]["specificity"]}
        for metric in COMPARE_METRICS:
            v = values[metric]
            rows.append({"task": m["task"], "arch": m["arch"], "model": label, "metric": metric,
                         "value": v["value"], "ci_low": v["ci_low"], "ci_high": v["ci_high"],
                         "input_size": m["input_size"], "weights": m.get("weights"),
                         "data_source": m.get("data_source", "unknown"), "split": split})
    if not rows:
        raise ValueError("no metrics files to compare")
    return pd.DataFrame(rows)


def compare_models(metrics_paths: Sequence[str | Path], figure_path: str | Path,
                   table_path: str | Path | None = None, split: str = "test") -> pd.DataFrame:
    """The model-comparison chart (the study's Figure 3) and its table across architectures."""
    from .plots import classify as plots

    table = comparison_table(metrics_paths, split)
    sources = sorted(set(table["data_source"]))
    fig = plots.comparison_figure(table, f"Model comparison on {split} (95% CI)",
                                  sources[0] if len(sources) == 1 else "+".join(sources))
    plots.save(fig, figure_path)
    if table_path is not None:
        Path(table_path).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(table_path, index=False, float_format="%.6g")
    return table
