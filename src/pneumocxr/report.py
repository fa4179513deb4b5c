"""Run summary and model card: this run's headline metrics next to the published numbers.

The ``summary`` stage reads what the other stages wrote (metrics JSONs, per-image predictions,
the data summary and the split manifest) and writes

* ``results/summary.json``: the numbers, with 95% CIs and where each came from (data, test-set
  prevalence, image size, starting weights), next to :data:`PUBLISHED`;
* ``results/summary.md``: the same as tables for people;
* ``results/MODEL_CARD.md``: intended use, training data and its hash, split manifest, test set,
  headline metrics, calibration, thresholds and known limits.

Accuracy, precision, F1 and error rate depend on the share of pneumonia in the test set, so
they are also given *re-weighted* to the study's test set (:data:`STUDY_TEST_SET`, 62.5%
pneumonia): the value that the same per-class recalls (sensitivity and specificity) would give
on a test set with that class mix, with a patient bootstrap CI computed from the per-image
predictions. Every number of a synthetic demo run is flagged in the first line of each file.

Inputs are named (Snakemake ``input:`` names, DVC ``--input name=path``):

``data``                      results/data/summary.json (prepare)
``processed``                 data/processed (its metadata.csv is the split manifest)
``classify_<task>_<arch>``    results/classify/<task>/<arch>/metrics.json (evaluate)
``predictions_<task>_<arch>`` results/classify/<task>/<arch>/predictions.csv (evaluate)
``explain_<task>_<arch>``     results/explain/<task>/<arch>/metrics.json (optional)
``embed_<task>_<arch>``       results/embed/<task>/<arch>/metrics.json (optional)
``model_<task>_<arch>``       the classifier checkpoint (optional; hashed)
``anomaly``, ``anomaly_scores``, ``anomaly_model``   results/anomaly/{metrics.json,scores.csv},
                              the autoencoder checkpoint (optional as a group)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import InputError, MissingInputError
from . import __version__
from .checkpoint import file_sha256
from .metrics import bootstrap_cis, reweight_to_prevalence
from .utils import jsonable

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------- published data

#: The test set every published number below was measured on: the official Kermany test folder
#: (Kaggle ``chest_xray/test``): 234 normal, 242 bacterial and 148 viral pneumonia images.
STUDY_TEST_SET: dict[str, Any] = {
    "name": "Kermany official test set",
    "n_images": 624,
    "class_counts": {"normal": 234, "bacteria": 242, "virus": 148},
}
STUDY_PREVALENCE = (242 + 148) / 624  # 0.625 pneumonia

#: Published numbers: the study this project reproduces and two anchors on the same data.
#: Values are fractions; ``None`` = not stated. One place: summary.md, summary.json and the model
#: card all read this table.
PUBLISHED: tuple[dict[str, Any], ...] = (
    {"id": "study_binary", "source": "the study", "role": "study", "task": "binary",
     "arch": "ResNet-18", "image_size": 224, "weights": "ImageNet-pretrained, fine-tuned",
     "metrics": {"accuracy": 0.8638, "precision": 0.829, "sensitivity": 0.985}},
    {"id": "study_three_class", "source": "the study", "role": "study", "task": "three_class",
     "arch": "VGG16", "image_size": 224, "weights": "ImageNet-pretrained, fine-tuned",
     "metrics": {"accuracy": 0.7836}},
    {"id": "study_anomaly", "source": "the study", "role": "study", "task": "anomaly",
     "arch": "convolutional autoencoder", "image_size": None,
     "weights": "trained from scratch on normal images",
     "metrics": {"error_rate": 0.299, "precision": 0.796, "sensitivity": 0.700,
                 "specificity": 0.701, "f1": 0.745}},
    {"id": "kermany2018", "source": "Kermany et al. 2018 (Cell 172:1122)", "role": "anchor",
     "task": "binary", "arch": "Inception V3", "image_size": None,
     "weights": "ImageNet-pretrained, fine-tuned",
     "metrics": {"accuracy": 0.928, "auroc": 0.968}},
    {"id": "squid2023", "source": "SQUID (Xiang et al., CVPR 2023)", "role": "anchor",
     "task": "anomaly", "arch": "SQUID (feature in-painting)", "image_size": None,
     "weights": "trained on normal images only", "metrics": {"auroc": 0.876}},
)

# What each table shows: (key, label, scale, prevalence). scale: pct | frac | auc. prevalence:
# "free" (does not depend on it), "reweighted" (also given at the study's), "dependent" (depends
# on it, not re-weighted).
FREE, REWEIGHTED, DEPENDENT = "free", "reweighted", "dependent"
ROWS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "binary": (
        ("accuracy", "accuracy (argmax)", "pct", REWEIGHTED),
        ("auroc", "AUROC", "auc", FREE),
        ("precision", "pneumonia precision (PPV)", "pct", REWEIGHTED),
        ("sensitivity", "pneumonia recall (sensitivity)", "pct", FREE),
        ("specificity", "specificity", "pct", FREE),
        ("f1", "pneumonia F1", "pct", REWEIGHTED),
        ("op_sensitivity", "sensitivity at the operating threshold", "pct", FREE),
        ("op_specificity", "specificity at the operating threshold", "pct", FREE),
    ),
    "three_class": (
        ("accuracy", "accuracy (argmax, 3 classes)", "pct", REWEIGHTED),
        ("auroc", "AUROC (macro one-vs-rest)", "auc", FREE),
        ("recall_normal", "recall: normal", "pct", FREE),
        ("recall_bacteria", "recall: bacteria", "pct", FREE),
        ("recall_virus", "recall: virus", "pct", FREE),
        ("op_sensitivity", "pneumonia sensitivity at the operating threshold (folded)", "pct",
         FREE),
        ("op_specificity", "specificity at the operating threshold (folded)", "pct", FREE),
    ),
    "anomaly": (
        ("error_rate", "error rate", "frac", REWEIGHTED),
        ("precision", "precision (PPV)", "frac", REWEIGHTED),
        ("sensitivity", "sensitivity", "frac", FREE),
        ("specificity", "specificity", "frac", FREE),
        ("f1", "F1", "frac", REWEIGHTED),
        ("auroc", "AUROC", "auc", FREE),
        ("auprc", "AUPRC", "auc", DEPENDENT),
    ),
}
TASK_TITLES = {"binary": "Binary (normal vs pneumonia)",
               "three_class": "3-class (normal / bacterial / viral pneumonia)",
               "anomaly": "Anomaly detection (autoencoder trained on normal images)"}
METRIC_NAMES = {"accuracy": "accuracy", "precision": "precision", "sensitivity": "sensitivity",
                "specificity": "specificity", "error_rate": "error rate", "f1": "F1",
                "auroc": "AUROC"}
TASK_ORDER = ("binary", "three_class")
CLASSIFIER_KINDS = ("classify", "predictions", "explain", "embed", "model")
SYNTHETIC_NOTICE = ("SYNTHETIC DEMO RUN: data.source = demo, procedurally generated images "
                    "that are not chest X-rays. These numbers test the pipeline; they say "
                    "nothing about pneumonia detection and must not be compared with the "
                    "published ones.")


# ------------------------------------------------------------------------------- reading inputs


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: {what} missing; run its stage first")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: {what} is not valid JSON ({err}); rerun its stage") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: {what} should be a JSON object; rerun its stage")
    return data


def _get(data: Mapping[str, Any], dotted: str, path: str | Path) -> Any:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            raise InputError(f"{path}: no {dotted!r}; the file is from an older or different "
                             "stage version, rerun that stage")
        node = node[key]
    return node


def _read_csv(path: str | Path, columns: Sequence[str], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: {what} missing; run its stage first")
    try:
        df = pd.read_csv(path, dtype={"patient": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: {what} is not a readable CSV ({err}); rerun its stage") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: {what} lacks columns {missing}; rerun its stage")
    return df


def split_inputs(inputs: Mapping[str, str]) -> tuple[dict[tuple[str, str], dict[str, str]],
                                                     dict[str, str]]:
    """``{"classify_binary_resnet18": p, "data": q}`` -> ``({("binary", "resnet18"):
    {"classify": p}}, {"data": q})``: per-classifier inputs and the others."""
    per_model: dict[tuple[str, str], dict[str, str]] = {}
    other: dict[str, str] = {}
    for name, path in inputs.items():
        kind, _, rest = name.partition("_")
        # task names hold underscores themselves (three_class): match them, do not split
        task = next((t for t in TASK_ORDER if rest.startswith(t + "_")), None)
        arch = rest[len(task) + 1:] if task else ""
        if kind in CLASSIFIER_KINDS and task and arch:
            per_model.setdefault((task, arch), {})[kind] = str(path)
        else:
            other[name] = str(path)
    return per_model, other


# ------------------------------------------------------------------------------- re-weighting


def class_mix(task: str) -> dict[str, float]:
    """Class shares of :data:`STUDY_TEST_SET` for ``task`` (binary: normal vs pneumonia)."""
    c = STUDY_TEST_SET["class_counts"]
    n = sum(c.values())
    if task == "three_class":
        return {k: v / n for k, v in c.items()}
    return {"normal": c["normal"] / n, "pneumonia": (c["bacteria"] + c["virus"]) / n}


def reweighted_metrics(labels: np.ndarray, pred: np.ndarray, patients: np.ndarray | None,
                       weights: Sequence[float], *, n_boot: int = 1000, seed: int = 0
                       ) -> dict[str, dict[str, float]]:
    """Metrics of decisions ``pred`` re-weighted to the class mix ``weights`` (label order).

    With per-class recalls ``r_c`` measured on this test set, a test set whose class shares are
    ``w_c`` would give accuracy ``sum_c w_c r_c`` (error rate ``1 -`` that). With two classes
    (1 = positive), also precision and F1 via :func:`~pneumocxr.metrics.reweight_to_prevalence`
    at prevalence ``w_1``. 95% CIs: percentile bootstrap resampling ``patients``.
    """
    y = np.asarray(labels).astype(int)
    p = np.asarray(pred).astype(int)
    w = np.asarray(weights, dtype=float)
    if len(y) != len(p) or len(y) == 0:
        raise InputError(f"re-weighting needs as many decisions as labels (got {len(p)} and "
                         f"{len(y)}), at least one")
    if w.ndim != 1 or len(w) < 2 or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"class weights must be >= 0 with a positive sum, got {list(w)}")
    w = w / w.sum()
    k = len(w)

    def stats(yy: np.ndarray, pp: np.ndarray) -> dict[str, float]:
        recalls = np.array([np.mean(pp[yy == c] == c) if np.any(yy == c) else np.nan
                            for c in range(k)])
        acc = float(np.sum(w * recalls))
        out = {"accuracy": acc, "error_rate": 1.0 - acc}
        if k == 2:
            rw = reweight_to_prevalence(float(recalls[1]), float(recalls[0]), float(w[1]))
            out["precision"], out["f1"] = rw["precision"], rw["f1"]
        return out

    return bootstrap_cis(stats, [y, p], groups=patients, n_boot=n_boot, seed=seed)


# ------------------------------------------------------------------------------- building


def _ci(node: Any) -> dict[str, Any]:
    """A {value, ci_low, ci_high} node (bootstrap output) -> the same three keys, NaN -> None."""
    def clean(v):
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)
    if isinstance(node, Mapping):
        return {k: clean(node.get(k)) for k in ("value", "ci_low", "ci_high")}
    return {"value": clean(node), "ci_low": None, "ci_high": None}


def weights_label(weights: str | None, folded_from: str | None = None) -> str:
    if folded_from:
        start = "from scratch" if weights in (None, "none") else weights_label(weights)
        return f"the three-class network folded (joint head, {start}): {folded_from}"
    if weights in (None, "none"):
        return "none (trained from scratch)"
    if weights == "imagenet":
        return "ImageNet-pretrained, fine-tuned"
    return f"initialised from {weights}"


def _data_section(summary_path: str, processed: str | None) -> dict[str, Any]:
    s = _read_json(summary_path, "data summary")
    counts = _get(s, "counts", summary_path)
    prevalence = {}
    for split, c in counts.items():
        total = c.get("total", 0)
        prevalence[split] = c.get("label", {}).get("PNEUMONIA", 0) / total if total else None
    dups = _get(s, "duplicates", summary_path)
    leak = _get(s, "leakage", summary_path)
    params = s.get("params", {})
    out = {
        "source": _get(s, "data_source", summary_path), "root": s.get("root"),
        "n_images": s.get("n_images"), "counts": counts, "patients": s.get("patients", {}),
        "prevalence": prevalence, "has_subtypes": s.get("has_subtypes"),
        "rejected": s.get("rejected", {}).get("count", 0),
        "preprocess": {"resize": params.get("resize"), "crop": params.get("crop"),
                       "clahe": params.get("clahe")},
        "val_split": {"fraction": params.get("val_fraction"), "seed": params.get("split_seed"),
                      "by": s.get("stratification", {}).get("by"),
                      "max_gap_points": s.get("stratification", {}).get("max_gap_points")},
        "duplicates": {
            "n_groups": int(dups.get("n_groups", 0)), "n_files": int(dups.get("n_files", 0)),
            "n_across_splits": int(leak.get("n_duplicate_groups_across_splits", 0)),
            "examples": [g.get("files", []) for g in dups.get("groups", [])[:3]],
        },
        "patients_in_two_splits": int(leak.get("n_patients_in_two_splits", 0)),
    }
    if processed is not None:
        out["manifest"] = manifest_section(processed)
    return out


def manifest_section(processed: str | Path) -> dict[str, Any]:
    """The split manifest (``metadata.csv``): its hash, rows per split, and the hash of the
    training data (train + val rows: file, label, subtype, patient, image sha256)."""
    path = Path(processed) / "metadata.csv"
    meta = _read_csv(path, ("split", "file", "label", "subtype", "patient", "sha256"),
                     "split manifest")
    train = meta[meta["split"].isin(["train", "val"])].sort_values(["split", "file"])
    lines = "\n".join(",".join(str(v) for v in row) for row in train[
        ["split", "file", "label", "subtype", "patient", "sha256"]].itertuples(index=False))
    return {"path": str(path), "sha256": file_sha256(path), "n_rows": int(len(meta)),
            "rows_per_split": {k: int(v) for k, v in meta["split"].value_counts().items()},
            "training_data_sha256": hashlib.sha256(lines.encode()).hexdigest(),
            "training_data_hash_of": "sorted train+val rows of the manifest: split, file, "
                                     "label, subtype, patient, sha256 of the image file"}


def _shortcut(explain: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for band in explain.get("shortcut", {}).get("bands", []):
        drop = _ci(band.get("accuracy_drop"))
        rows.append({"band": band.get("band"), "band_px": band.get("band_px"),
                     "accuracy_plain": _ci(band.get("accuracy_plain")),
                     "accuracy_blanked": _ci(band.get("accuracy_blanked")),
                     "accuracy_drop": drop, "auroc_drop": _ci(band.get("auroc_drop")),
                     "changed_predictions": _ci(band.get("changed_predictions"))["value"],
                     "verdict": _verdict(drop)})
    return rows


def _verdict(drop: Mapping[str, Any]) -> str:
    lo, hi = drop.get("ci_low"), drop.get("ci_high")
    if lo is None or hi is None:
        return "no CI"
    if lo > 0:
        return "significant drop: the model uses the border"
    if hi < 0:
        return "accuracy rises with the border blanked: the border misleads the model"
    return "no significant change"


def _classifier(task: str, arch: str, files: Mapping[str, str], *, n_boot: int | None,
                seed: int) -> dict[str, Any]:
    for kind in ("classify", "predictions"):
        if kind not in files:
            raise InputError(f"summary: input {kind}_{task}_{arch} is missing (every classifier "
                             "needs its metrics and predictions)")
    mpath = files["classify"]
    m = _read_json(mpath, f"{task} {arch} metrics")
    test = _get(m, "test", mpath)
    class_names = list(_get(m, "class_names", mpath))
    per_class = _get(test, "per_class", mpath)
    counts = _get(test, "class_counts", mpath)
    n = int(_get(test, "n_images", mpath))
    metrics = {"accuracy": _ci(_get(test, "accuracy", mpath)),
               "auroc": _ci(_get(test, "auroc", mpath)),
               "op_sensitivity": _ci(_get(test, "at_operating.sensitivity", mpath)),
               "op_specificity": _ci(_get(test, "at_operating.specificity", mpath))}
    if task == "binary":
        pos = per_class[class_names[1]]
        metrics.update(precision=_ci(pos["precision"]), sensitivity=_ci(pos["recall"]),
                       specificity=_ci(pos["specificity"]), f1=_ci(pos["f1"]))
    else:
        for name in class_names:
            metrics[f"recall_{name}"] = _ci(per_class[name]["recall"])
    preds = _read_csv(files["predictions"], ("split", "patient", "label", "pred"),
                      f"{task} {arch} predictions")
    t = preds[preds["split"] == "test"]
    if len(t) != n:
        raise InputError(f"{files['predictions']}: {len(t)} test rows but {mpath} counts {n} "
                         "test images; rerun evaluate")
    mix = class_mix(task)
    boot = int(n_boot if n_boot is not None else m.get("n_boot", 1000))
    at_ref = reweighted_metrics(t["label"].to_numpy(), t["pred"].to_numpy(),
                                t["patient"].to_numpy(), [mix[c] for c in class_names],
                                n_boot=boot, seed=seed)
    transfer = m.get("threshold_transfer") or {}
    op = m.get("operating_threshold") or {}
    cal = test.get("calibration", {})
    out: dict[str, Any] = {
        "task": task, "arch": m.get("arch", arch), "class_names": class_names,
        "data_source": m.get("data_source"), "image_size": m.get("input_size"),
        "weights": m.get("weights"),
        "weights_label": weights_label(m.get("weights"), m.get("folded_from")),
        "best_epoch": m.get("best_epoch"),
        "test": {"n_images": n, "n_patients": test.get("n_patients"), "class_counts": counts,
                 "prevalence": 1.0 - counts.get(class_names[0], 0) / n if n else None},
        "metrics": metrics,
        "at_study_prevalence": {k: _ci(v) for k, v in at_ref.items()},
        "threshold": {"rule": op.get("rule"), "value": op.get("value"),
                      "target_sensitivity": op.get("target_sensitivity"),
                      "val_sensitivity": transfer.get("val_sensitivity"),
                      "val_specificity": transfer.get("val_specificity"),
                      "test_sensitivity": transfer.get("test_sensitivity"),
                      "test_specificity": transfer.get("test_specificity")},
        "calibration": {"temperature": m.get("temperature"),
                        "ece_before": cal.get("ece_before"), "ece_after": cal.get("ece_after")},
        "sources": {k: files[k] for k in sorted(files) if k != "model"},
    }
    if "model" in files:
        out["checkpoint"] = {"path": files["model"], "sha256": file_sha256(files["model"])}
    if "explain" in files:
        e = _read_json(files["explain"], f"{task} {arch} explain metrics")
        out["shortcut"] = _shortcut(e)
        sel = (e.get("lung_share") or {}).get("selected") or {}
        out["lung_enrichment"] = {
            method: {c: v.get("enrichment", {}).get("mean")
                     for c, v in (sel.get(method) or {}).get("template", {}).get("base", {}).items()}
            for method in ("occlusion", "gradcam") if method in sel}
    if "embed" in files:
        e = _read_json(files["embed"], f"{task} {arch} embedding metrics")
        sel = e.get("selection", {})
        out["embedding"] = {"knn_accuracy": _ci(e.get("knn", {}).get("accuracy_ci95")),
                            "head_accuracy": _ci(e.get("network_head", {}).get("accuracy_ci95")),
                            "k": sel.get("k"), "metric": sel.get("metric"),
                            "dim": e.get("embedding_dim")}
    return out


def _anomaly(metrics_path: str, scores_path: str, model_path: str | None, *, n_boot: int,
             seed: int) -> dict[str, Any]:
    m = _read_json(metrics_path, "anomaly metrics")
    test = _get(m, "test", metrics_path)
    metrics = {k: _ci(_get(test, k, metrics_path))
               for k in ("error_rate", "precision", "sensitivity", "specificity", "f1",
                         "auroc", "auprc")}
    scores = _read_csv(scores_path, ("split", "patient", "label", "flagged"), "anomaly scores")
    t = scores[scores["split"] == "test"]
    y = (t["label"].astype(str).str.upper() == "PNEUMONIA").astype(int).to_numpy()
    flagged = t["flagged"].astype(str).str.lower().isin(["true", "1"]).astype(int).to_numpy()
    mix = class_mix("binary")
    at_ref = reweighted_metrics(y, flagged, t["patient"].to_numpy(),
                                [mix["normal"], mix["pneumonia"]], n_boot=n_boot, seed=seed)
    model = m.get("model", {})
    thr = m.get("threshold", {})
    score = m.get("score", {})
    out = {
        "task": "anomaly", "arch": "convolutional autoencoder"
        + (" (variational)" if model.get("variational") else ""),
        "data_source": m.get("data_source"), "image_size": model.get("input_size"),
        "variant": m.get("variant"),
        "weights_label": f"none (trained from scratch on {model.get('n_train_normal', '?')} "
                         "normal training images)",
        "score": score.get("label", score.get("method")),
        "test": {"n_images": test.get("n"), "n_patients": test.get("n_patients"),
                 "prevalence": test.get("prevalence")},
        "metrics": metrics,
        "at_study_prevalence": {k: _ci(v) for k, v in at_ref.items()},
        "threshold": {"rule": thr.get("rule"), "value": thr.get("value"),
                      "val_fpr": thr.get("val_fpr"), "val_fnr": thr.get("val_fnr"),
                      "test_sensitivity": metrics["sensitivity"]["value"],
                      "test_specificity": metrics["specificity"]["value"]},
        "sources": {"metrics": metrics_path, "scores": scores_path},
    }
    base = _baseline(m.get("baseline") and m["baseline"].get("test"))
    if base:
        out["baseline"] = base
    if model_path is not None:
        out["checkpoint"] = {"path": model_path, "sha256": file_sha256(model_path)}
    return out


def _baseline(node: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The study's detector row (``anomaly.evaluate.baseline``) of an anomaly evaluation."""
    if not node:
        return None
    return {"method": node.get("method"),
            **{k: _ci(node.get(k)) for k in ("auroc", "sensitivity", "specificity",
                                             "auroc_difference")}}


def _baseline_sentence(b: Mapping[str, Any]) -> str:
    return (f"The study's detector on the same autoencoder ({b['method']}, image mean, its own "
            f"EER threshold on `val`): AUROC {fmt_ci(b['auroc'], 'frac')}, sensitivity "
            f"{fmt_ci(b['sensitivity'], 'frac')}, specificity {fmt_ci(b['specificity'], 'frac')}; "
            f"the score's AUROC minus its: {fmt_diff(b['auroc_difference'])} (paired patient "
            "bootstrap).")


def _external(sets_path: str) -> dict[str, Any]:
    """Every external test set's evaluation (``results/external/<set>/metrics.json`` and its
    ``data.json``, beside the ``sets.json`` that lists them)."""
    sets = _read_json(sets_path, "external test sets")
    root = Path(sets_path).parent
    out = {}
    for name in sets:
        m = _read_json(root / name / "metrics.json", f"external set {name} metrics")
        d = _read_json(root / name / "data.json", f"external set {name} data report")
        out[name] = {"metrics": m, "data": d,
                     "sources": {"metrics": str(root / name / "metrics.json"),
                                 "data": str(root / name / "data.json")}}
    return out


def build_summary(inputs: Mapping[str, str], *, seed: int = 0, n_boot: int | None = None,
                  test_label: str = "test split") -> dict[str, Any]:
    """The summary dict (written as summary.json) from the named stage outputs.

    ``n_boot`` replicates for the re-weighted CIs (default: each classifier's own ``n_boot``;
    1000 for the anomaly detector); ``seed`` seeds that bootstrap.
    """
    per_model, other = split_inputs(inputs)
    if "data" not in other:
        raise InputError("summary: input 'data' (results/data/summary.json) is required")
    data = _data_section(other["data"], other.get("processed"))
    classifiers = [_classifier(task, arch, per_model[(task, arch)], n_boot=n_boot, seed=seed)
                   for task in TASK_ORDER for (t, arch) in per_model if t == task]
    anomaly = None
    if "anomaly" in other:
        if "anomaly_scores" not in other:
            raise InputError("summary: input 'anomaly' needs 'anomaly_scores' "
                             "(results/anomaly/scores.csv) too")
        anomaly = _anomaly(other["anomaly"], other["anomaly_scores"], other.get("anomaly_model"),
                           n_boot=int(n_boot or 1000), seed=seed)
    external = _external(other["external_sets"]) if "external_sets" in other else {}
    geometry = (_read_json(other["geometry"], "geometry baseline") if "geometry" in other
                else None)
    sources = {data["source"]} | {c["data_source"] for c in classifiers}
    if anomaly:
        sources.add(anomaly["data_source"])
    sources.discard(None)
    if len(sources) > 1:
        log.warning("stage outputs come from different data sources %s: rerun the pipeline",
                    sorted(sources))
    synthetic = "demo" in sources
    return {
        "synthetic": synthetic,
        "notice": SYNTHETIC_NOTICE if synthetic else None,
        "test_label": test_label,
        "pneumocxr_version": __version__,
        "data_sources": sorted(sources),
        "data": data,
        "ci": {"level": 0.95, "method": "percentile bootstrap over patients"},
        "study_test_set": {**STUDY_TEST_SET, "prevalence": STUDY_PREVALENCE},
        "reweighting": "prevalence-dependent metrics re-weighted to the study test set's class "
                       "mix: the same per-class recalls on a test set with those class shares",
        # dicts keyed by name (not lists), so `dvc metrics show/diff` lists every number
        "classifiers": {f"{c['task']}_{c['arch']}": c for c in classifiers},
        "anomaly": anomaly,
        "external": external,
        "geometry": geometry,
        "published": {p["id"]: dict(p, data=STUDY_TEST_SET["name"], prevalence=STUDY_PREVALENCE)
                      for p in PUBLISHED},
    }


# ------------------------------------------------------------------------------- rendering


def fmt(value: float | None, scale: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if scale == "pct":
        return f"{100 * value:.1f}%"
    return f"{value:.3f}"


def fmt_ci(node: Mapping[str, Any] | None, scale: str) -> str:
    if not node or node.get("value") is None:
        return "n/a"
    lo, hi = node.get("ci_low"), node.get("ci_high")
    if lo is None or hi is None:
        return f"{fmt(node['value'], scale)} [CI n/a]"
    if scale == "pct":
        return f"{100 * node['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{node['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def fmt_published(value: float | None, scale: str) -> str:
    """A published value as it was published: percentages with their digits (0.8638 -> 86.38%),
    fractions and AUROCs with three decimals (0.7 -> 0.700)."""
    if value is None:
        return "-"
    if scale == "pct":
        decimals = max(len(repr(value).split(".")[-1]) - 2, 0)
        return f"{100 * value:.{decimals}f}%"
    return f"{value:.3f}"


def _fmt_difference(node: Mapping[str, Any] | None, spec: str, scale: float = 1.0,
                    unit: str = "") -> str:
    """A difference with its CI, each number formatted by ``spec`` after ``scale``."""
    if not node or node.get("value") is None:
        return "n/a"
    lo, hi = node.get("ci_low"), node.get("ci_high")
    ci = "CI n/a" if lo is None or hi is None else f"{scale * lo:{spec}}, {scale * hi:{spec}}"
    return f"{scale * node['value']:{spec}}{unit} [{ci}]"


def fmt_diff(node: Mapping[str, Any] | None) -> str:
    """A signed difference of two AUROCs with its CI: ``+0.120 [+0.070, +0.170]``."""
    return _fmt_difference(node, "+.3f")


def fmt_points(node: Mapping[str, Any] | None) -> str:
    """A difference of two rates in percentage points with its CI: ``-1.2 pts [-3.0, 0.5]``."""
    return _fmt_difference(node, ".1f", 100.0, " pts")


def _band_drops(run: Mapping[str, Any]) -> str:
    bands = run.get("shortcut") or []
    if not bands:
        return "not run"
    return "; ".join(f"{b['band_px']} px: {fmt_points(b['accuracy_drop'])}" for b in bands)


def _prev(p: float | None) -> str:
    return "n/a" if p is None else f"{100 * p:.1f}%"


def _published_for(task: str) -> list[dict[str, Any]]:
    return [p for p in PUBLISHED if p["task"] == task]


def _metric_table(task: str, run: Mapping[str, Any]) -> list[str]:
    pubs = _published_for(task)
    head = ["metric", "this run (95% CI)",
            f"re-weighted to {_prev(STUDY_PREVALENCE)} pneumonia (95% CI)"]
    head += [f"{p['source']}: {p['arch']}" for p in pubs]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key, label, scale, prevalence in ROWS[task]:
        if key not in run["metrics"]:
            continue
        cells = [label, fmt_ci(run["metrics"][key], scale)]
        ref = run["at_study_prevalence"].get(key)
        if prevalence == REWEIGHTED and ref:
            cells.append(fmt_ci(ref, scale))
        elif prevalence == FREE:
            cells.append("same (prevalence-free)")
        else:
            cells.append("depends on prevalence, not re-weighted")
        cells += [fmt_published(p["metrics"].get(key), scale) for p in pubs]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _title(run: Mapping[str, Any]) -> str:
    if run["task"] == "anomaly":
        return TASK_TITLES["anomaly"]
    return f"{TASK_TITLES[run['task']]}: {run['arch']}"


def _provenance(run: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    t = run["test"]
    what = f"{data['source']} data at `{data['root']}`"
    return (f"Data: {what}, `test` split: {t['n_images']} images"
            + (f" of {t['n_patients']} patients" if t.get("n_patients") else "")
            + f", pneumonia prevalence {_prev(t['prevalence'])}. Image size: "
            f"{run['image_size']} px. Starting weights: {run['weights_label']}.")


def render_summary_md(summary: Mapping[str, Any]) -> str:
    data = summary["data"]
    lines: list[str] = []
    if summary["synthetic"]:
        lines += [f"# {summary['notice']}", "", "## Run summary"]
    else:
        lines += [f"# Run summary: {data['source']} data at `{data['root']}`"]
    lines += ["",
              f"Headline metrics of this run on its `test` split ({summary['test_label']}) with "
              "95% confidence intervals "
              "(percentile bootstrap over patients), next to the published numbers. All "
              f"published numbers are on the {STUDY_TEST_SET['name']} "
              f"({STUDY_TEST_SET['n_images']} images, {_prev(STUDY_PREVALENCE)} pneumonia). "
              "Accuracy, precision, F1 and error rate depend on that share, so they are also "
              "given re-weighted to it: what this run's per-class recalls would give on a test "
              "set with the study's class mix.", ""]
    for run in summary["classifiers"].values():
        lines += [f"## {_title(run)}", "",
                  _provenance(run, data), ""]
        lines += _metric_table(run["task"], run)
        th = run["threshold"]
        if th.get("value") is not None:
            lines += ["", f"Operating threshold on p(pneumonia): {th['value']:.3f} "
                          f"({th['rule']}, chosen on `val`, never on `test`)."]
        lines.append("")
    if not any(r["task"] == "three_class" for r in summary["classifiers"].values()):
        lines += ["## " + TASK_TITLES["three_class"], "",
                  "Not run: this data source has no bacterial/viral subtypes. Published: "
                  + "; ".join(f"{p['source']} ({p['arch']}) accuracy "
                              f"{fmt_published(p['metrics']['accuracy'], 'pct')}"
                              for p in _published_for("three_class")), ""]
    a = summary.get("anomaly")
    if a:
        lines += [f"## {_title(a)}", "", _provenance(a, data)
                  + f" Score: {a['score']} on the {a['variant']} images.", ""]
        lines += _metric_table("anomaly", a)
        th = a["threshold"]
        if th.get("value") is not None:
            lines += ["", f"Threshold {th['value']:.4g} ({th['rule']} on `val`: false positive "
                          f"rate {fmt(th.get('val_fpr'), 'frac')}, false negative rate "
                          f"{fmt(th.get('val_fnr'), 'frac')})."]
        if a.get("baseline"):
            lines += ["", _baseline_sentence(a["baseline"])]
        lines.append("")
    lines += external_md(summary)
    lines += geometry_md(summary)
    lines += ["## Published numbers", "",
              "| source | task | architecture | image size | weights | metrics |",
              "| --- | --- | --- | --- | --- | --- |"]
    for p in PUBLISHED:
        scale = "frac" if p["task"] == "anomaly" else "pct"
        ms = ", ".join(f"{METRIC_NAMES[k]} {fmt_published(v, 'frac' if k == 'auroc' else scale)}"
                       for k, v in p["metrics"].items())
        size = f"{p['image_size']} px" if p["image_size"] else "not stated"
        lines.append(f"| {p['source']} | {p['task']} | {p['arch']} | {size} | {p['weights']} "
                     f"| {ms} |")
    lines += ["", f"All on the {STUDY_TEST_SET['name']}: "
              + ", ".join(f"{v} {k}" for k, v in STUDY_TEST_SET["class_counts"].items())
              + f" ({_prev(STUDY_PREVALENCE)} pneumonia).", ""]
    extra = [r for r in summary["classifiers"].values() if r.get("embedding") or r.get("shortcut")]
    if extra:
        lines += ["## Embeddings and shortcut probe", "",
                  "| model | k-NN accuracy on embeddings | network head accuracy "
                  "| test accuracy drop with the image border blanked (band width: drop) |",
                  "| --- | --- | --- | --- |"]
        for r in extra:
            e = r.get("embedding") or {}
            lines.append(f"| {r['task']} {r['arch']} | {fmt_ci(e.get('knn_accuracy'), 'pct')} "
                         f"| {fmt_ci(e.get('head_accuracy'), 'pct')} | {_band_drops(r)} |")
        lines.append("")
    lines += ["Sources: " + ", ".join(f"`{p}`" for r in summary["classifiers"].values()
                                      for p in r["sources"].values())
              + (", " + ", ".join(f"`{p}`" for p in a["sources"].values()) if a else "")
              + ", `results/data/summary.json`. Model card: `results/MODEL_CARD.md`.", ""]
    return "\n".join(lines)


#: rows of the external-set table: (label, path in a classifier's external metrics, scale)
EXTERNAL_ROWS = (
    ("AUROC (normal vs pneumonia)", "normal_vs_pneumonia.auroc", "frac"),
    ("accuracy at 0.5", "normal_vs_pneumonia.at_half.accuracy", "pct"),
    ("sensitivity at 0.5", "normal_vs_pneumonia.at_half.sensitivity", "pct"),
    ("specificity at 0.5", "normal_vs_pneumonia.at_half.specificity", "pct"),
    ("sensitivity at the operating point", "normal_vs_pneumonia.at_operating.sensitivity", "pct"),
    ("specificity at the operating point", "normal_vs_pneumonia.at_operating.specificity", "pct"),
    ("PPV at the operating point (set's prevalence)", "normal_vs_pneumonia.at_operating.ppv",
     "pct"),
    ("NPV at the operating point (set's prevalence)", "normal_vs_pneumonia.at_operating.npv",
     "pct"),
    ("three-class accuracy", "three_class.accuracy", "pct"),
    ("k-NN accuracy on the embeddings", "knn.accuracy_ci95", "pct"),
)


def _dig(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _test_column(run: Mapping[str, Any]) -> dict[str, Any]:
    """The same rows for the run's own test split, from the summary's classifier entry."""
    m = run["metrics"]
    binary = run["task"] == "binary"   # its argmax is p(pneumonia) >= 0.5
    return {"normal_vs_pneumonia.auroc": m.get("auroc") if binary else None,
            "normal_vs_pneumonia.at_half.sensitivity": m.get("sensitivity") if binary else None,
            "normal_vs_pneumonia.at_half.specificity": m.get("specificity") if binary else None,
            "normal_vs_pneumonia.at_operating.sensitivity": m.get("op_sensitivity"),
            "normal_vs_pneumonia.at_operating.specificity": m.get("op_specificity"),
            "normal_vs_pneumonia.at_half.accuracy": m.get("accuracy")
            if run["task"] == "binary" else None,
            "three_class.accuracy": m.get("accuracy") if run["task"] == "three_class" else None,
            "knn.accuracy_ci95": (run.get("embedding") or {}).get("knn_accuracy")}


def external_md(summary: Mapping[str, Any]) -> list[str]:
    """Markdown: one table per classifier, a column for the test split and one per external
    set; then the anomaly detector, the shortcut probe and the lung-field share per set."""
    ext = summary.get("external") or {}
    if not ext:
        return []
    names = list(ext)
    lines = ["## External test sets", "",
             "Every model evaluated unchanged on each external set (operating points, k-NN "
             "indexes and the anomaly threshold fitted on `val`; nothing is fitted on these "
             "sets). 95% bootstrap CIs over "
             + "; ".join(f"`{n}`: {ext[n]['metrics']['bootstrap_unit'].split(' (')[0]}s"
                         for n in names) + ". "
             + "; ".join(f"`{n}`: {ext[n]['data']['n_images']} images, "
                         f"{_prev(ext[n]['data']['prevalence'])} pneumonia, "
                         f"{ext[n]['data']['n_excluded_in_train']} excluded as training images, "
                         f"{ext[n]['data']['n_rejected']} rejected" for n in names) + ".", ""]
    head = ["metric", summary.get("test_label", "test split")] + [f"`{n}`" for n in names]
    for key, run in summary["classifiers"].items():
        lines += [f"### {run['task']} {run['arch']}", "",
                  "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        own = _test_column(run)
        for label, path, scale in EXTERNAL_ROWS:
            cells = [fmt_ci(own.get(path), scale) if own.get(path) else "-"]
            for n in names:
                cm = ext[n]["metrics"]["classifiers"].get(key) or {}
                cells.append(fmt_ci(_dig(cm, path), scale) if _dig(cm, path) else "-")
            if all(c in ("-", "n/a") for c in cells):
                continue
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        moves = []
        for n in names:
            v = (ext[n]["metrics"]["classifiers"].get(key) or {}).get("val_to_external") or {}
            if v.get("val_sensitivity") is not None:
                moves.append(f"`{n}`: sensitivity {fmt(v['val_sensitivity'], 'pct')} on val -> "
                             f"{fmt(v['sensitivity'], 'pct')}, specificity "
                             f"{fmt(v['val_specificity'], 'pct')} -> "
                             f"{fmt(v['specificity'], 'pct')}")
        if moves:
            lines += ["", "At the operating point fitted on val: " + "; ".join(moves) + "."]
        lines.append("")
    a_rows = [(n, ext[n]["metrics"].get("anomaly")) for n in names]
    if any(a for _, a in a_rows):
        lines += ["### Anomaly detector", "", "| set | AUROC | sensitivity | specificity "
                  "| the study's detector: AUROC | AUROC minus the study's (paired) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        a = summary.get("anomaly") or {}

        def row(name: str, am: Mapping[str, Any], base: Mapping[str, Any] | None) -> str:
            base = base or {}
            return (f"| {name} | {fmt_ci(am.get('auroc'), 'frac')} | "
                    f"{fmt_ci(am.get('sensitivity'), 'frac')} | "
                    f"{fmt_ci(am.get('specificity'), 'frac')} | "
                    f"{fmt_ci(base.get('auroc'), 'frac')} | {fmt_diff(base.get('auroc_difference'))} |")

        if a:
            lines.append(row(summary.get("test_label", "test split"), a["metrics"],
                             a.get("baseline")))
        for n, am in a_rows:
            if am:
                lines.append(row(f"`{n}`", am, _baseline(am.get("baseline"))))
        lines.append("")
    lines += ["### Shortcut probe and lung-field share", "",
              "| set | model | accuracy drop with the border blanked (band: drop) | Grad-CAM "
              "enrichment inside the lung mask, by class (1 = uniform) |",
              "| --- | --- | --- | --- |"]
    for n in names:
        for key, cm in ext[n]["metrics"]["classifiers"].items():
            probe = cm.get("shortcut") or {}
            drops = "; ".join(f"{b['band_px']} px: {fmt_points(b.get('accuracy_drop'))}"
                              for b in probe.get("bands", [])) or "not run"
            share = (cm.get("lung_share_gradcam") or {}).get("by_class", {})
            enr = ", ".join(f"{c} {fmt(v.get('enrichment_mean'), 'frac')}"
                            for c, v in share.items()) or "not run"
            lines.append(f"| `{n}` | {key} | {drops} | {enr} |")
    lines.append("")
    return lines


def geometry_md(summary: Mapping[str, Any]) -> list[str]:
    """Markdown: the geometry-only baseline next to the binary models' test AUROC."""
    g = summary.get("geometry")
    if not g:
        return []
    lines = ["## The acquisition shortcut: a geometry-only baseline", ""]
    if not g.get("available"):
        return lines + [f"Not measured: {g.get('reason')}.", ""]
    single = g["single_feature_train_auroc"]
    lines += ["The class predicted from the original image size alone (logistic regression on "
              "width, height and aspect ratio; sizes from " + g["sizes_from"] + "; "
              f"{g['n_train']} train and {g['n_test']} test images with known sizes). On train, "
              f"the aspect ratio alone gives AUROC {single['aspect']['auroc']:.3f} (pneumonia "
              f"{single['aspect']['pneumonia_is']}) and the area {single['area']['auroc']:.3f} "
              f"(pneumonia {single['area']['pneumonia_is']}): a model can score well by reading "
              "the acquisition, and a resized copy keeps the geometry in its pixels.", "",
              f"| model | AUROC on the {summary.get('test_label', 'test split')} (95% CI) |",
              "| --- | --- |",
              f"| geometry only, patient-grouped CV on train | {fmt_ci(g['train_cv']['auroc'], 'frac')} |",
              f"| geometry only, fitted on train | {fmt_ci(g['test']['auroc'], 'frac')} |"]
    for run in summary["classifiers"].values():
        if run["task"] == "binary":
            lines.append(f"| {run['arch']} binary classifier (all images) | "
                         f"{fmt_ci(run['metrics']['auroc'], 'frac')} |")
    return lines + [""]


def _limits(summary: Mapping[str, Any]) -> list[str]:
    data = summary["data"]
    out = []
    if summary["synthetic"]:
        out.append("**Synthetic data.** This run used procedurally generated demo images; the "
                   "models have never seen a chest X-ray.")
    else:
        out.append("**Pediatric, single centre.** The Kermany images are anterior-posterior "
                   "chest X-rays of children aged one to five from one hospital (Guangzhou "
                   "Women and Children's Medical Center); nothing here shows the models work "
                   "on adults, other hospitals, other devices or other acquisition protocols.")
    prev = data["prevalence"]
    shift = [f"pneumonia prevalence in {split} {_prev(prev.get(split))}"
             for split in ("train", "val", "test") if prev.get(split) is not None]
    transfer = []
    for r in summary["classifiers"].values():
        th = r["threshold"]
        if th.get("val_sensitivity") is not None:
            transfer.append(f"{r['task']} {r['arch']}: sensitivity "
                            f"{fmt(th['val_sensitivity'], 'pct')} on val -> "
                            f"{fmt(th['test_sensitivity'], 'pct')} on test, specificity "
                            f"{fmt(th['val_specificity'], 'pct')} -> "
                            f"{fmt(th['test_specificity'], 'pct')}")
    out.append("**Shift between train and test.** The `test` split is the data set's own test "
               "folder, other patients than train; the validation split is carved from the "
               "train patients, so what is tuned on it (threshold, temperature) can move on "
               f"test. Measured: {', '.join(shift)}. Threshold on val -> test: "
               + ("; ".join(transfer) or "n/a") + ".")
    d = data["duplicates"]
    examples = "; ".join(" = ".join(f"`{f}`" for f in g) for g in d["examples"])
    out.append(f"**Exact duplicates.** The data summary found {d['n_groups']} groups of "
               f"byte-identical images ({d['n_files']} files), {d['n_across_splits']} of them "
               f"across splits" + (f" (e.g. {examples})" if examples else "")
               + f"; {data['patients_in_two_splits']} patients appear in two splits.")
    probes = []
    for r in summary["classifiers"].values():
        for b in r.get("shortcut") or []:
            probes.append(f"{r['task']} {r['arch']}, {b['band_px']} px band: accuracy drop "
                          f"{fmt_points(b['accuracy_drop'])}, "
                          f"{fmt(b['changed_predictions'], 'pct')} of predictions change "
                          f"({b['verdict']})")
    out.append("**Shortcut probe** (explain stage: the image border blanked, the model "
               "re-evaluated on test; a drop whose CI excludes 0 means the border matters: "
               "burnt-in text and markers, or anatomy near the edge for wide bands): "
               + ("; ".join(probes) if probes else "not run") + ".")
    g = summary.get("geometry") or {}
    if g.get("available"):
        out.append("**The acquisition shortcut.** The original image size alone predicts the "
                   f"class: a logistic regression on width, height and aspect ratio reaches "
                   f"AUROC {fmt_ci(g['test']['auroc'], 'frac')} on the test images with known "
                   f"sizes ({fmt_ci(g['train_cv']['auroc'], 'frac')} in patient-grouped CV on "
                   "train); pneumonia originals are smaller and wider. A squashed copy keeps "
                   "that geometry in its pixels, so part of what any model here scores may be "
                   "the acquisition, not the lungs.")
    enr = []
    for r in summary["classifiers"].values():
        for method, by_class in (r.get("lung_enrichment") or {}).items():
            enr.append(f"{r['task']} {r['arch']} {method}: " + ", ".join(
                f"{c} {fmt(v, 'frac')}" for c, v in by_class.items()))
    if enr:
        out.append("**Where the models look.** Share of attribution inside the lung fields "
                   "divided by the fields' share of the image (1 = no more than a uniform map; "
                   "explain stage, template mask): " + "; ".join(enr) + ". The lung mask is a "
                   "heuristic (Otsu on the CLAHE image), never checked against reference masks, "
                   "and it drops opacified lung, so these shares are indicative only.")
    out.append("**Labels.** Image-level labels from the data set's folders (and file names for "
               "the bacterial/viral subtype); no radiologist re-read here, no lesion location.")
    return out


def render_model_card(summary: Mapping[str, Any]) -> str:
    data = summary["data"]
    lines: list[str] = []
    if summary["synthetic"]:
        lines += [f"# {summary['notice']}", "", "## Model card"]
    else:
        lines += [f"# Model card: pneumocxr on {data['source']} data at `{data['root']}`"]
    models = [f"{r['task']} {r['arch']}" for r in summary["classifiers"].values()]
    if summary.get("anomaly"):
        models.append("anomaly autoencoder")
    lines += ["", f"pneumocxr {summary['pneumocxr_version']}. Models of this run: "
              + ", ".join(models) + ".", "", "## Models", "",
              "| model | image size | starting weights | best epoch | checkpoint | sha256 |",
              "| --- | --- | --- | --- | --- | --- |"]
    runs = list(summary["classifiers"].values())
    if summary.get("anomaly"):
        runs.append(summary["anomaly"])
    for r in runs:
        ck = r.get("checkpoint") or {}
        lines.append(f"| {r['task']} {r['arch']} | {r['image_size']} px | {r['weights_label']} "
                     f"| {r.get('best_epoch', '-') or '-'} | `{ck.get('path', 'n/a')}` "
                     f"| `{ck.get('sha256', 'n/a')[:16]}` |")
    lines += ["", "## Intended use", "",
              "- Research and teaching: reproducing and extending a published study of "
              "pneumonia detection on pediatric chest X-rays; comparing architectures, "
              "embeddings, anomaly detection and explanations under one reproducible pipeline.",
              "", "## Not intended for", "",
              "- Diagnosis, triage, screening or any decision about a patient; the models are "
              "not validated clinically and carry no regulatory clearance.",
              "- Adult chest X-rays, other hospitals, devices or views than the training data's.",
              "- Choosing treatment from the bacterial/viral prediction.", "",
              "## Training data", ""]
    c = data["counts"]
    lines.append(f"- Source: {data['source']} at `{data['root']}`; {data['n_images']} images "
                 f"kept, {data['rejected']} rejected (`results/data/rejected.csv`).")
    lines.append("- Splits (images / patients / pneumonia prevalence): " + "; ".join(
        f"{s} {c[s]['total']} / {data['patients'].get(s, 'n/a')} / "
        f"{_prev(data['prevalence'].get(s))}" for s in c) + ".")
    vs = data["val_split"]
    lines.append(f"- Validation split: {vs['fraction']} of the train patients, grouped by "
                 f"patient, stratified by {vs['by']} (largest share gap {vs['max_gap_points']} "
                 f"points), seed {vs['seed']}.")
    pp = data["preprocess"]
    clahe = pp.get("clahe") or {}
    lines.append(f"- Preprocessing: shorter side resized to {pp['resize']} px, centre crop "
                 f"{pp['crop']} px; the autoencoder reads CLAHE images (clip limit "
                 f"{clahe.get('clip_limit', 'n/a')}, {clahe.get('tile_grid', 'n/a')} tiles per "
                 "side).")
    man = data.get("manifest")
    if man:
        lines.append(f"- Split manifest: `{man['path']}` ({man['n_rows']} rows, sha256 "
                     f"`{man['sha256']}`).")
        lines.append(f"- Training data hash (train + val): `{man['training_data_sha256']}` "
                     f"({man['training_data_hash_of']}).")
    lines += ["", "## Test set", "",
              f"- The `test` split: {c.get('test', {}).get('total', 'n/a')} images, pneumonia "
              f"prevalence {_prev(data['prevalence'].get('test'))}. The published numbers are on "
              f"the {STUDY_TEST_SET['name']} ({_prev(STUDY_PREVALENCE)} pneumonia); "
              "prevalence-dependent metrics are also re-weighted to that share.", "",
              f"## Headline metrics ({summary.get('test_label', 'test split')}, 95% CI)", ""]
    for r in runs:
        lines += [f"### {_title(r)}", "", _provenance(r, data), ""]
        lines += _metric_table(r["task"], r)
        lines.append("")
    lines += ["## Calibration", "",
              "| model | temperature (fitted on val) | ECE on test before | ECE after |",
              "| --- | --- | --- | --- |"]
    for r in summary["classifiers"].values():
        cal = r["calibration"]
        lines.append(f"| {r['task']} {r['arch']} | {fmt(cal['temperature'], 'frac')} | "
                     f"{fmt(cal['ece_before'], 'frac')} | {fmt(cal['ece_after'], 'frac')} |")
    lines += ["", "## Thresholds", ""]
    for r in summary["classifiers"].values():
        th = r["threshold"]
        if th.get("value") is None:
            continue
        rule = th["rule"] + (f" (target sensitivity {th['target_sensitivity']})"
                             if th.get("target_sensitivity") else "")
        lines.append(f"- {r['task']} {r['arch']}: p(pneumonia) >= {th['value']:.3f}, {rule}, "
                     f"chosen on val (sensitivity {fmt(th['val_sensitivity'], 'pct')}, "
                     f"specificity {fmt(th['val_specificity'], 'pct')}); on test "
                     f"{fmt(th['test_sensitivity'], 'pct')} / "
                     f"{fmt(th['test_specificity'], 'pct')}.")
    a = summary.get("anomaly")
    if a and a["threshold"].get("value") is not None:
        th = a["threshold"]
        lines.append(f"- anomaly: score >= {th['value']:.4g} ({th['rule']} on val: FPR "
                     f"{fmt(th['val_fpr'], 'frac')}, FNR {fmt(th['val_fnr'], 'frac')}); on test "
                     f"sensitivity {fmt(th['test_sensitivity'], 'frac')}, specificity "
                     f"{fmt(th['test_specificity'], 'frac')}.")
    lines += [""] + [ln.replace("## External test sets", "## External validation", 1)
                     for ln in external_md(summary)]
    lines += geometry_md(summary)
    lines += ["", "## Known limits", ""]
    lines += [f"- {item}" for item in _limits(summary)]
    lines.append("")
    return "\n".join(lines)


def write_report(inputs: Mapping[str, str], outputs: Mapping[str, str], *, seed: int = 0,
                 n_boot: int | None = None, test_label: str = "test split") -> dict[str, Any]:
    """The ``summary`` stage: ``outputs`` keys ``summary`` (JSON), ``markdown`` (summary.md),
    ``model_card`` (MODEL_CARD.md); each optional, an unknown key is a ValueError."""
    known = {"summary", "markdown", "model_card"}
    unknown = set(outputs) - known
    if unknown:
        raise InputError(f"unknown summary outputs {sorted(unknown)}; known: {sorted(known)}")
    summary = jsonable(build_summary(inputs, seed=seed, n_boot=n_boot, test_label=test_label))
    texts = {"summary": json.dumps(summary, indent=2) + "\n",
             "markdown": render_summary_md(summary),
             "model_card": render_model_card(summary)}
    for key, path in outputs.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(texts[key])
        log.info("wrote %s", path)
    return summary
