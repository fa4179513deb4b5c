"""Calibration of a classifier on its validation predictions: temperature and operating point.

The ``calibrate`` stage runs after training, on the validation predictions that training wrote
(``val_predictions.csv``: the selected epoch's logits on the patient-grouped val split), so a
different threshold rule reruns this stage and what reads its output, never the training:

1. **temperature** T minimising the negative log-likelihood of ``softmax(logits / T)`` (Guo et
   al., 2017); it changes probabilities, not the argmax;
2. **operating threshold** on p(pneumonia) = 1 - p(normal) after temperature scaling, by the
   rule of params ``calibrate`` (:func:`choose_threshold`).

Both go to ``calibration.json`` beside the model, which ``evaluate``, ``predict`` and the
summary read. Also here: reliability bins and the expected calibration error (ECE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import roc_curve

from .errors import InputError, MissingInputError
from .logits import pneumonia_score, probabilities, read_predictions
from .metrics import binary_rates, youden_threshold
from .settings import CalibrateSettings
from .utils import write_json

THRESHOLD_RULES = ("youden", "sensitivity", "plateau", "half")
#: what the threshold is applied to
THRESHOLD_SCORE = "p(pneumonia) = 1 - p(normal), after temperature scaling"
CALIBRATION_FORMAT = 1


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
        raise InputError("fit_temperature needs at least one sample")
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
        raise InputError(f"n_bins must be >= 1, got {n_bins}")
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




def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def plateau_threshold(y_true: np.ndarray, score: np.ndarray, tolerance: float
                      ) -> dict[str, float]:
    """The middle, in logit space, of the run of thresholds whose Youden J is within
    ``tolerance`` of the best one (the run holding the best).

    On a well-separated validation split many thresholds are equally good, and Youden's
    argmax sits at one edge of that plateau: the first to give way when the scores of new
    images move. The middle keeps the largest margin to both classes' scores.
    """
    y = np.asarray(y_true).astype(int)
    z = _logit(score)
    u = np.unique(z)
    cuts = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    pos, neg = z[y == 1], z[y == 0]
    sens = np.array([(pos >= c).mean() for c in cuts])
    spec = np.array([(neg < c).mean() for c in cuts])
    j = sens + spec - 1
    best = int(np.argmax(j))
    ok = j >= j[best] - tolerance
    lo = hi = best
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    while hi < len(cuts) - 1 and ok[hi + 1]:
        hi += 1
    # cut i stands for every threshold in (u[i-1], u[i]]: the run spans (low, high]
    low = u[lo - 1] if lo > 0 else u[0] - 1.0
    high = u[hi] if hi < len(u) else u[-1] + 1.0

    def sigmoid(v: float) -> float:
        return float(1 / (1 + np.exp(-v)))

    return {"threshold": sigmoid((low + high) / 2), "plateau_low": sigmoid(low),
            "plateau_high": sigmoid(high), "best_j": float(j[best])}


def choose_threshold(y_true: np.ndarray, score: np.ndarray, rule: str = "youden",
                     target_sensitivity: float = 0.95, tolerance: float = 0.02
                     ) -> dict[str, Any]:
    """Operating threshold on p(pneumonia) from validation data (a score >= it is positive).

    Rules: ``youden`` maximises sensitivity + specificity - 1; ``sensitivity`` is the highest
    threshold whose sensitivity reaches ``target_sensitivity`` (the most specific such point);
    ``plateau`` is the middle of the near-best Youden thresholds (:func:`plateau_threshold`,
    within ``tolerance``); ``half`` is 0.5, the temperature-scaled argmax.
    """
    y_true = np.asarray(y_true).astype(int)
    if len(np.unique(y_true)) < 2:
        raise InputError("choosing a threshold needs normal and pneumonia images in the "
                         "validation split")
    extra: dict[str, Any] = {}
    if rule == "youden":
        t = youden_threshold(y_true, score)["threshold"]
    elif rule == "plateau":
        res = plateau_threshold(y_true, score, tolerance)
        t = res.pop("threshold")
        extra = {"tolerance": float(tolerance), **res}
    elif rule == "half":
        t = 0.5
    elif rule == "sensitivity":
        if not 0.0 < target_sensitivity <= 1.0:
            raise InputError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
        fpr, tpr, thr = roc_curve(y_true, score)
        ok = np.flatnonzero((tpr >= target_sensitivity) & np.isfinite(thr))
        t = float(thr[ok[0]]) if len(ok) else float(np.min(score))
    else:
        raise InputError(f"threshold rule must be one of {THRESHOLD_RULES}, got {rule!r}")
    rates = binary_rates(y_true, (np.asarray(score) >= t).astype(int))
    return {"value": float(t), "rule": rule,
            "target_sensitivity": float(target_sensitivity) if rule == "sensitivity" else None,
            "val_sensitivity": rates["sensitivity"], "val_specificity": rates["specificity"],
            **extra}


# ----------------------------------------------------------------------------- the stage


def calibrate(logits: np.ndarray, labels: np.ndarray, settings: CalibrateSettings
              ) -> dict[str, Any]:
    """Temperature, then the operating threshold on the temperature-scaled p(pneumonia)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    temperature = fit_temperature(logits, labels)
    threshold = choose_threshold((labels != 0).astype(int),
                                 pneumonia_score(probabilities(logits, temperature)),
                                 settings.rule, settings.target_sensitivity, settings.tolerance)
    threshold["score"] = THRESHOLD_SCORE
    return {"format": CALIBRATION_FORMAT, "temperature": temperature,
            "operating_threshold": threshold}


def run_calibration(predictions_path: str | Path, output_path: str | Path,
                    params: Mapping[str, Any] | CalibrateSettings | None = None
                    ) -> dict[str, Any]:
    """The ``calibrate`` stage: ``val_predictions.csv`` in, ``calibration.json`` out."""
    settings = CalibrateSettings.from_params(params)
    pred = read_predictions(predictions_path)
    result = calibrate(pred.logits, pred.labels, settings)
    result["fitted_on"] = {"file": str(predictions_path), "split": "val",
                           "n_images": int(len(pred.labels)),
                           "class_counts": {c: int((pred.labels == i).sum())
                                            for i, c in enumerate(pred.class_names)}}
    write_json(result, output_path)
    return result


def load_calibration(path: str | Path) -> dict[str, Any]:
    """A ``calibration.json`` of :func:`run_calibration` (or of ``pneumocxr calibrate``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: calibration file not found; run the calibrate stage "
                                "(or `pneumocxr calibrate` for a site's own operating point)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise InputError(f"{path}: not a calibration file of format {CALIBRATION_FORMAT} "
                         f"(found format {data.get('format') if isinstance(data, dict) else None!r});"
                         " rerun the calibrate stage")
    return data
