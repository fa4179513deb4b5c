"""From anomaly scores to decisions: the EER threshold chosen on val, metrics with patient-
bootstrap CIs, and the trained detector as ``predict`` and the external evaluation load it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from ..errors import InputError, MissingInputError
from ..metrics import (auroc, binary_rates, bootstrap_ci, bootstrap_cis, eer_threshold,
                       reweight_to_prevalence)
from ..models import ConvAutoencoder, load_autoencoder
from .scores import AnomalyScore, create_score


def choose_threshold(y_true: np.ndarray, score: np.ndarray, tolerance: float = 5e-3
                     ) -> dict[str, Any]:
    """Equal-error-rate threshold on validation scores (a score >= it flags pneumonia).

    Returns the threshold, the validation FPR and FNR at it, their gap, and whether the gap is
    within ``tolerance`` (the study's 5e-3; with few validation images the achievable gaps are
    multiples of 1/n, so it may be out of reach).
    """
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=float)
    if len(np.unique(y_true)) < 2:
        raise InputError("the EER threshold needs normal and pneumonia images in the validation "
                         "split; raise data.val_fraction")
    if not np.all(np.isfinite(score)):
        raise InputError("anomaly scores contain NaN or infinity; check the model checkpoint")
    t = eer_threshold(y_true, score)
    return {"value": t["threshold"], "rule": "eer", "val_fpr": t["fpr"], "val_fnr": t["fnr"],
            "gap": t["gap"], "tolerance": float(tolerance),
            "tolerance_met": bool(t["gap"] <= tolerance)}


def _statistics(threshold: float, prevalence: float):
    def stats(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
        r = binary_rates(y, (s >= threshold).astype(int))
        both = len(np.unique(y)) == 2
        rw = reweight_to_prevalence(r["sensitivity"], r["specificity"], prevalence)
        return {
            "error_rate": r["error_rate"], "accuracy": r["accuracy"],
            "precision": r["precision"], "sensitivity": r["sensitivity"],
            "specificity": r["specificity"], "f1": r["f1"],
            "auroc": float(roc_auc_score(y, s)) if both else float("nan"),
            "auprc": float(average_precision_score(y, s)) if both else float("nan"),
            "precision_at_reference_prevalence": rw["precision"],
            "f1_at_reference_prevalence": rw["f1"],
        }
    return stats


def anomaly_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float,
                 patients: np.ndarray | None = None, *, prevalence: float = 0.625,
                 n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metrics at ``threshold`` with 95% percentile-bootstrap CIs resampling patients.

    Error rate, accuracy, precision, sensitivity, specificity, F1, AUROC, AUPRC, and precision
    and F1 re-weighted to ``prevalence`` (what the same sensitivity and specificity give where
    that share of images is pneumonia; 0.625 is the official Kermany test set).
    """
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=float)
    cis = bootstrap_cis(_statistics(threshold, prevalence), [y_true, score], groups=patients,
                        n_boot=n_boot, seed=seed)
    counts = binary_rates(y_true, (score >= threshold).astype(int))
    return {"n": int(len(y_true)), "n_patients": int(len(np.unique(patients)))
            if patients is not None else int(len(y_true)),
            "prevalence": float(y_true.mean()) if len(y_true) else float("nan"),
            "reference_prevalence": float(prevalence),
            **cis, **{k: counts[k] for k in ("tp", "fp", "tn", "fn")}}


def baseline_score(method: str) -> AnomalyScore:
    """The study's detector as a score: the reconstruction error ``method`` averaged over the
    whole image (``anomaly.evaluate.baseline``)."""
    return create_score(method, aggregation="mean", region="image")


def versus_baseline(y_true: np.ndarray, score: np.ndarray, base: np.ndarray,
                    base_threshold: float, patients: np.ndarray | None, *, method: str,
                    prevalence: float, n_boot: int, seed: int) -> dict[str, Any]:
    """The baseline's metrics at its own val threshold, and the paired AUROC difference
    (score minus baseline, the same patient-bootstrap replicates for both)."""
    y_true = np.asarray(y_true).astype(int)
    diff = bootstrap_ci(lambda y, a, b: auroc(y, a) - auroc(y, b), [y_true, score, base],
                        groups=patients, n_boot=n_boot, seed=seed)
    return {"method": method, "aggregation": "image mean",
            **anomaly_metrics(y_true, base, base_threshold, patients, prevalence=prevalence,
                              n_boot=n_boot, seed=seed),
            "threshold": float(base_threshold), "auroc_difference": diff}


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


@dataclass
class Detector:
    """A trained autoencoder with its fitted score and the val threshold (what
    ``evaluate_anomaly`` saved): everything needed to flag new images the same way."""

    model: ConvAutoencoder
    meta: dict[str, Any]
    scorer: AnomalyScore
    threshold: float
    score_params: dict[str, Any]
    #: the study's row (``anomaly.evaluate.baseline``): its score, method and val threshold
    baseline: tuple[AnomalyScore, str, float] | None = None


def load_detector(model_path: str | Path, state_path: str | Path, device: str = "cpu"
                  ) -> Detector:
    """The autoencoder ``model_path`` and the ``score_state.pt`` of its evaluation."""
    model, meta = load_autoencoder(model_path, device)
    state_path = Path(state_path)
    if not state_path.is_file():
        raise MissingInputError(f"{state_path}: not found; the evaluate_anomaly stage writes "
                                "the fitted score and its threshold")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    scorer = create_score(**state["score"])
    if scorer.needs_fit:
        scorer.load_state_dict(state["state"])
    base = state.get("baseline")
    baseline = None if not base else (baseline_score(base["method"]), base["method"],
                                      float(base["threshold"]["value"]))
    return Detector(model, meta, scorer, float(state["threshold"]["value"]), dict(state["score"]),
                    baseline)


def pick_examples(y: np.ndarray, n_per_class: int, seed: int) -> np.ndarray:
    """Indices of up to ``n_per_class`` normal then pneumonia images (seeded, sorted)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        take = min(n_per_class, len(idx))
        out.append(np.sort(rng.choice(idx, size=take, replace=False)) if take else idx[:0])
    return np.concatenate(out).astype(int)
