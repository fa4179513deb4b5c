"""Metrics shared by every stage: confusion-derived rates, patient-level bootstrap CIs, thresholds.

scikit-learn computes the metrics; this module adds what it lacks: specificity, confidence
intervals that resample *patients* (images of one patient are not independent), and the
threshold rules the stages use.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


def binary_rates(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, sensitivity (recall), specificity and F1 for labels 0/1 (1 = positive).

    Undefined ratios (0/0) are reported as NaN rather than silently 0.
    """
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b else float("nan")

    precision = ratio(tp, tp + fp)
    sensitivity = ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "error_rate": ratio(fp + fn, tp + tn + fp + fn),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": ratio(tn, tn + fp),
        "f1": f1,
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
    }


def reweight_to_prevalence(sensitivity: float, specificity: float, prevalence: float) -> dict:
    """Precision and F1 that the same sensitivity/specificity would give at another prevalence."""
    tp = sensitivity * prevalence
    fp = (1.0 - specificity) * (1.0 - prevalence)
    fn = (1.0 - sensitivity) * prevalence
    precision = tp / (tp + fp) if tp + fp > 0 else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else float("nan")
    return {"prevalence": prevalence, "precision": float(precision), "f1": float(f1)}


def bootstrap_ci(
    statistic: Callable[..., float],
    arrays: Sequence[np.ndarray],
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Percentile bootstrap CI of ``statistic(*arrays)``, resampling whole groups (patients).

    Each replicate draws ``n_groups`` patients with replacement and takes all of their images,
    so correlated images of one patient move together. Replicates where the statistic is
    undefined (e.g. one class only, for AUROC) are dropped; ``n_valid`` says how many were kept.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if groups is None:
        groups = np.arange(n)
    groups = np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    point = float(statistic(*arrays))
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), size=len(uniq))
        idx = np.concatenate([members[g] for g in pick])
        try:
            v = float(statistic(*[a[idx] for a in arrays]))
        except ValueError:
            continue
        if np.isfinite(v):
            values.append(v)
    if not values:
        return {"value": point, "ci_low": float("nan"), "ci_high": float("nan"), "n_valid": 0}
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return {"value": point, "ci_low": float(lo), "ci_high": float(hi), "n_valid": len(values)}


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y_true, score))


def eer_threshold(y_true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Threshold where |FPR - FNR| is smallest (equal error rate); higher score = positive.

    Returns the threshold, FPR, FNR and their gap at it. A score >= threshold is positive.
    """
    fpr, tpr, thr = roc_curve(y_true, score)
    fnr = 1.0 - tpr
    finite = np.isfinite(thr)
    fpr, fnr, thr = fpr[finite], fnr[finite], thr[finite]
    i = int(np.argmin(np.abs(fpr - fnr)))
    return {"threshold": float(thr[i]), "fpr": float(fpr[i]), "fnr": float(fnr[i]),
            "gap": float(abs(fpr[i] - fnr[i]))}


def youden_threshold(y_true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Threshold maximising sensitivity + specificity - 1 (Youden's J)."""
    fpr, tpr, thr = roc_curve(y_true, score)
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    i = int(np.argmax(tpr - fpr))
    return {"threshold": float(thr[i]), "sensitivity": float(tpr[i]),
            "specificity": float(1.0 - fpr[i])}


def bootstrap_cis(
    statistics: Callable[..., dict[str, float]],
    arrays: Sequence[np.ndarray],
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, float]]:
    """:func:`bootstrap_ci` for a statistic returning several named values at once.

    Same patient resampling (same seed -> same replicates as :func:`bootstrap_ci`); each
    replicate evaluates ``statistics`` once, so a confusion matrix is built once for all the
    rates derived from it. A value that is NaN (undefined) in a replicate is dropped for that
    key only; ``n_valid`` counts the replicates kept per key.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if groups is None:
        groups = np.arange(n)
    groups = np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    point = {k: float(v) for k, v in statistics(*arrays).items()}
    values: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), size=len(uniq))
        idx = np.concatenate([members[g] for g in pick])
        for key, v in statistics(*[a[idx] for a in arrays]).items():
            if key in values and np.isfinite(v):
                values[key].append(float(v))
    out = {}
    for key, v in point.items():
        if values[key]:
            lo, hi = np.quantile(values[key], [alpha / 2, 1 - alpha / 2])
            out[key] = {"value": v, "ci_low": float(lo), "ci_high": float(hi),
                        "n_valid": len(values[key])}
        else:
            out[key] = {"value": v, "ci_low": float("nan"), "ci_high": float("nan"),
                        "n_valid": 0}
    return out
