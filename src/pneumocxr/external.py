"""Evaluation of every model on one external test set (the ``evaluate_external`` stage).

An external set (:mod:`pneumocxr.data.external`) is never used for a choice: the models,
their operating points (``calibration.json``, fitted on val), the k-NN indexes and the anomaly
threshold come from the pipeline unchanged. Per set, with 95% bootstrap CIs that resample
patients (images, when the set has no patient ids: the report says which):

* each classifier: accuracy, AUROC, ECE, sensitivity by subtype, specificity, and PPV / NPV
  at the set's own prevalence, at 0.5 and at the shipped operating point, beside how the val
  rates moved; the three-class model also folded to normal vs pneumonia (its p(pneumonia)
  = 1 - p(normal), at its own operating point);
* the k-NN classifier on each model's embeddings;
* the anomaly detector at its val threshold;
* the border shortcut probe and the share of Grad-CAM attribution inside the lung fields.

Occlusion and faithfulness are left to the ``explain`` stage (seconds per image).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .calibration import expected_calibration_error, load_calibration
from .data.arrays import load_split
from .datasets import check_task, load_task_split
from .inference import predict_logits
from .logits import pneumonia_score, probabilities
from .metrics import bootstrap_cis
from .settings import EvaluateSettings, LungMaskSettings, ShortcutSettings
from .utils import resolve_device, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierFiles:
    """One trained classifier of the run and the files that come with it."""

    task: str
    arch: str
    model: str
    calibration: str
    knn_index: str | None = None


def _rates(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tp = float(np.sum((pred == 1) & (y == 1)))
    tn = float(np.sum((pred == 0) & (y == 0)))
    fp = float(np.sum((pred == 1) & (y == 0)))
    fn = float(np.sum((pred == 0) & (y == 1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"accuracy": (tp + tn) / len(y), "sensitivity": np.float64(tp) / (tp + fn),
                "specificity": np.float64(tn) / (tn + fp), "ppv": np.float64(tp) / (tp + fp),
                "npv": np.float64(tn) / (tn + fn)}


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def binary_view(y: np.ndarray, score: np.ndarray, subtypes: np.ndarray, groups: np.ndarray,
                thresholds: Mapping[str, float], *, n_boot: int, seed: int) -> dict[str, Any]:
    """Normal-vs-pneumonia metrics of a score at each named threshold, with CIs: accuracy,
    sensitivity (overall and by subtype), specificity, PPV and NPV at this set's prevalence,
    and the AUROC."""
    y = np.asarray(y).astype(int)
    subs = sorted(set(subtypes[y == 1]) - {"unknown"})

    def stats(yy: np.ndarray, ss: np.ndarray, st: np.ndarray) -> dict[str, float]:
        out = {"auroc": _auroc(yy, ss)}
        for name, t in thresholds.items():
            pred = (ss >= t).astype(int)
            for k, v in _rates(yy, pred).items():
                out[f"{name}/{k}"] = v
            for sub in subs:
                m = st == sub
                out[f"{name}/sensitivity/{sub}"] = (float(pred[m].mean()) if m.any()
                                                    else float("nan"))
        return out

    cis = bootstrap_cis(stats, [y, np.asarray(score, float), np.asarray(subtypes)],
                        groups=groups, n_boot=n_boot, seed=seed)
    view: dict[str, Any] = {"auroc": cis["auroc"], "prevalence": float(y.mean()),
                            "n_images": int(len(y)), "n_normal": int((y == 0).sum())}
    for name, t in thresholds.items():
        node = {"threshold": float(t)}
        for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):
            node[k] = cis[f"{name}/{k}"]
        node["sensitivity_by_subtype"] = {sub: cis[f"{name}/sensitivity/{sub}"] for sub in subs}
        view[name] = node
    return view


def _classifier(files: ClassifierFiles, data_dir: Path, settings: EvaluateSettings, *,
                seed: int, progress: bool) -> tuple[dict[str, Any], pd.DataFrame, Any, Any]:
    from .models import load_model

    names = check_task(files.task)
    model, meta = load_model(files.model, class_names=list(names))
    cal = load_calibration(files.calibration)
    temperature = float(cal["temperature"])
    op = cal["operating_threshold"]
    data, _ = load_task_split(data_dir, "test", "binary")
    split = load_split(data_dir, "test")
    channels_last = bool(meta.get("channels_last", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    logits = predict_logits(model, data, normalization=meta["normalization"],
                            batch_size=settings.batch_size, input_size=int(meta["input_size"]),
                            precision=meta.get("precision", "fp32"), channels_last=channels_last,
                            progress=progress)
    probs = probabilities(logits, temperature)
    score = pneumonia_score(probs)
    y, groups = data.labels, data.patients
    out: dict[str, Any] = {
        "task": files.task, "arch": meta["arch"], "model": files.model,
        "calibration": files.calibration, "temperature": temperature,
        "operating_threshold": op, "precision": meta.get("precision", "fp32"),
        "normal_vs_pneumonia": binary_view(
            y, score, split.meta["subtype"].to_numpy(), groups,
            {"at_half": 0.5, "at_operating": float(op["value"])},
            n_boot=settings.n_boot, seed=seed),
    }
    at_op = out["normal_vs_pneumonia"]["at_operating"]
    out["val_to_external"] = {
        "val_sensitivity": op.get("val_sensitivity"), "val_specificity": op.get("val_specificity"),
        "sensitivity": at_op["sensitivity"]["value"], "specificity": at_op["specificity"]["value"],
        "delta_sensitivity": _delta(at_op["sensitivity"]["value"], op.get("val_sensitivity")),
        "delta_specificity": _delta(at_op["specificity"]["value"], op.get("val_specificity")),
    }
    if files.task == "binary":
        out["ece"] = expected_calibration_error(probs, y, settings.ece_bins)
    elif split.has_subtypes:
        y3 = split.y_three_class

        def acc(yy: np.ndarray, pp: np.ndarray) -> dict[str, float]:
            pred = pp.argmax(1)
            d = {"accuracy": float((pred == yy).mean())}
            for c, name in enumerate(names):
                m = yy == c
                d[f"recall/{name}"] = float((pred[m] == c).mean()) if m.any() else float("nan")
            return d

        cis = bootstrap_cis(acc, [y3, probs], groups=groups, n_boot=settings.n_boot, seed=seed)
        out["three_class"] = {"accuracy": cis["accuracy"],
                              "recall": {n: cis[f"recall/{n}"] for n in names}}
        out["ece"] = expected_calibration_error(probs, y3, settings.ece_bins)
    else:
        out["three_class"] = None
        out["ece"] = None
        out["note"] = ("the set has no bacteria/virus subtypes: the three-class model is "
                       "reported folded to normal vs pneumonia only")
    key = f"{files.task}_{meta['arch']}"
    pred_df = pd.DataFrame({f"p_pneumonia_{key}": score,
                            f"pred_{key}": (score >= float(op["value"])).astype(int)})
    return out, pred_df, model, meta


def _delta(value: float, ref: float | None) -> float | None:
    return None if ref is None or value is None else float(value) - float(ref)


def _knn(files: ClassifierFiles, model: Any, meta: Mapping[str, Any], data_dir: Path,
         settings: EvaluateSettings, *, seed: int) -> dict[str, Any] | None:
    if not files.knn_index:
        return None
    from .embed import extract_embeddings
    from .knn import classification_metrics, knn_predict, load_knn_index

    index = load_knn_index(files.knn_index)
    if files.task == "three_class" and not load_split(data_dir, "test").has_subtypes:
        return None
    ds, _ = load_task_split(data_dir, "test", files.task)
    emb = extract_embeddings(model, ds.images, batch_size=settings.batch_size,
                             normalization=meta["normalization"],
                             in_chans=int(meta["in_chans"]), input_size=int(meta["input_size"]),
                             progress=False)
    pred = knn_predict(index, emb)
    m = classification_metrics(ds.labels, pred.pred, list(index.class_names), groups=ds.patients,
                               n_boot=settings.n_boot, seed=seed)
    return {"k": index.k, "metric": index.metric, "accuracy": m["accuracy"],
            "accuracy_ci95": m["accuracy_ci95"], "balanced_accuracy": m["balanced_accuracy"],
            "confusion_matrix": m["confusion_matrix"]}


def _shortcut_and_lungs(model: Any, meta: Mapping[str, Any], data_dir: Path, task: str,
                        shortcut: ShortcutSettings, lung: LungMaskSettings, n_per_class: int,
                        batch_size: int, *, seed: int) -> dict[str, Any]:
    from .explain.gradcam import GradCAM
    from .explain.lungmask import attribution_share, lung_mask
    from .explain.shortcut import border_probe
    from .explain.targets import ClassifierOutputTarget, ImageModel

    subtypes = load_split(data_dir, "test").has_subtypes
    ds, _ = load_task_split(data_dir, "test", task if task == "binary" or subtypes else "binary")
    size = int(meta["input_size"])
    probe = None   # a three-class model on a set without subtypes has no task labels to probe
    if task == "binary" or subtypes:
        probe = border_probe(model, ds.images, ds.labels, normalization=meta["normalization"],
                             bands=list(shortcut.bands), value=128, input_size=size,
                             patients=ds.patients, batch_size=batch_size,
                             n_boot=shortcut.n_boot, seed=seed)
    clahe = load_split(data_dir, "test", "clahe")
    rng = np.random.default_rng(seed + 1)
    labels = ds.labels
    pick = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n_per_class]
                                   for c in np.unique(labels)]))
    shares: dict[str, list[float]] = {}
    if len(pick):
        from .datasets import to_float

        x = to_float(torch.from_numpy(np.ascontiguousarray(ds.images[pick]))[:, None], size)
        wrapped = ImageModel(model, meta["normalization"]).eval()
        logits = predict_logits(model, ds.images[pick], normalization=meta["normalization"],
                                batch_size=batch_size, input_size=size)
        with GradCAM(wrapped) as cam:
            maps = cam(x, [ClassifierOutputTarget(int(c)) for c in logits.argmax(1)]).numpy()
        cx = to_float(torch.from_numpy(np.ascontiguousarray(clahe.images[pick]))[:, None], size)
        masks = [lung_mask((cx[i, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy(), lung)
                 for i in range(len(pick))]
        for i, m in enumerate(masks):
            name = str(ds.class_names[labels[pick[i]]])
            area = float(m.mean())
            share = attribution_share(maps[i], m)
            shares.setdefault(name, []).append(share / area if area > 0 else float("nan"))
    lung_share = {name: {"n_images": len(v), "n_mask_failures": int(np.sum(~np.isfinite(v))),
                         "enrichment_mean": float(np.nanmean(v)) if np.isfinite(v).any()
                         else None}
                  for name, v in shares.items()}
    return {"shortcut": probe, "lung_share_gradcam": {
        "mask": "per image (Otsu on CLAHE, pneumocxr.explain.lungmask)",
        "enrichment": "share of positive Grad-CAM mass inside the mask / the mask's area "
                      "(1 = no more than a uniform map)", "by_class": lung_share}}


def _anomaly(model_path: str, state_path: str, data_dir: Path, *, n_boot: int, seed: int,
             batch_size: int) -> tuple[dict[str, Any], np.ndarray]:
    from .anomaly.detect import anomaly_metrics, load_detector
    from .anomaly.scores import compute_scores
    from .models import autoencoder_input

    det = load_detector(model_path, state_path)
    data = load_split(data_dir, "test", det.meta["variant"])
    x = autoencoder_input(np.asarray(data.images), int(det.meta["model"]["input_size"]))
    scores = compute_scores(det.scorer, det.model, x, batch_size)
    y = data.y_binary
    m = anomaly_metrics(y, scores, det.threshold, data.patients, prevalence=float(y.mean()),
                           n_boot=n_boot, seed=seed)
    sub = data.meta["subtype"].to_numpy()
    flagged = scores >= det.threshold
    m["flagged_by_subtype"] = {s: {"n": int((sub == s).sum()), "flagged": float(flagged[sub == s]
                                                                                .mean())}
                               for s in sorted(set(sub))}
    m["score"] = det.score_params
    m["threshold"] = det.threshold
    if det.baseline is not None:
        from .anomaly.detect import versus_baseline

        scorer_b, method, base_threshold = det.baseline
        base = compute_scores(scorer_b, det.model, x, batch_size)
        m["baseline"] = versus_baseline(y, scores, base, base_threshold, data.patients,
                                        method=method, prevalence=float(y.mean()),
                                        n_boot=n_boot, seed=seed)
    return m, scores


def run_external_evaluation(
    data_dir: str | Path,
    set_report: str | Path,
    classifiers: Sequence[ClassifierFiles],
    outputs: Mapping[str, str | Path],
    *,
    anomaly: tuple[str, str] | None = None,
    evaluate: EvaluateSettings | Mapping[str, Any] | None = None,
    shortcut: ShortcutSettings | Mapping[str, Any] | None = None,
    lung_mask: LungMaskSettings | Mapping[str, Any] | None = None,
    share_n_per_class: int = 20,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """The ``evaluate_external`` stage for one prepared set: ``outputs`` ``metrics`` (JSON),
    ``predictions`` (CSV, one row per image) and ``roc`` (figure)."""
    import json

    from .plots import external as plots

    data_dir = Path(data_dir)
    report = json.loads(Path(set_report).read_text())
    ev = EvaluateSettings.from_params(evaluate)
    sc = ShortcutSettings.from_params(shortcut)
    lm = LungMaskSettings.from_params(lung_mask)
    resolve_device(device)
    base = load_split(data_dir, "test")
    y = base.y_binary
    preds = pd.DataFrame({"file": base.meta["file"], "patient": base.meta["patient"],
                          "label": base.meta["label"], "subtype": base.meta["subtype"]})
    metrics: dict[str, Any] = {
        "set": report["name"], "data_source": report["data_source"],
        "training_data_source": report.get("training_data_source"),
        "n_images": report["n_images"], "prevalence": report["prevalence"],
        "patients_known": report["patients_known"], "bootstrap_unit": report["bootstrap_unit"],
        "n_boot": ev.n_boot, "ci_level": 0.95, "classifiers": {},
        "note": "evaluation only: models, operating points, k-NN indexes and the anomaly "
                "threshold come from the pipeline; nothing is fitted on this set",
    }
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for files in classifiers:
        res, pdf, model, meta = _classifier(files, data_dir, ev, seed=seed, progress=progress)
        key = f"{files.task}_{files.arch}"
        res["knn"] = _knn(files, model, meta, data_dir, ev, seed=seed)
        res.update(_shortcut_and_lungs(model, meta, data_dir, files.task, sc, lm,
                                       share_n_per_class, ev.batch_size, seed=seed))
        metrics["classifiers"][key] = res
        preds = pd.concat([preds, pdf], axis=1)
        curves[f"{files.task} {files.arch}"] = (y, pdf.iloc[:, 0].to_numpy(),
                                                float(res["operating_threshold"]["value"]))
        nv = res["normal_vs_pneumonia"]["at_operating"]
        log.info("%s on %s: AUROC %.3f; at the operating point sensitivity %.3f specificity "
                 "%.3f", key, report["name"], res["normal_vs_pneumonia"]["auroc"]["value"],
                 nv["sensitivity"]["value"], nv["specificity"]["value"])
    if anomaly is not None:
        m, scores = _anomaly(anomaly[0], anomaly[1], data_dir, n_boot=ev.n_boot, seed=seed,
                             batch_size=ev.batch_size)
        metrics["anomaly"] = m
        preds["anomaly_score"] = scores
        preds["anomaly_flagged"] = (scores >= m["threshold"]).astype(int)
        curves["anomaly score"] = (y, scores, float(m["threshold"]))
    write_json(metrics, outputs["metrics"])
    Path(outputs["predictions"]).parent.mkdir(parents=True, exist_ok=True)
    preds.to_csv(outputs["predictions"], index=False, float_format="%.6g")
    if outputs.get("roc"):
        plots.save(plots.roc_figure(curves, report["name"], report["data_source"],
                                    report.get("training_data_source") or "unknown"),
                   outputs["roc"])
    return metrics
