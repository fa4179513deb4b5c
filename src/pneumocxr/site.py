"""``pneumocxr calibrate``: an operating point for a new site, from a small labelled sample.

The operating threshold the pipeline ships is fitted on its own validation split; on another
site's images the scores of normal images often move (other detector, exposure, population),
and a threshold that was safe on val can give away specificity. A site that labels a few of
its own images can refit the binary model's temperature and threshold on them:

1. the sample (a folder of ``NORMAL/`` and ``PNEUMONIA/`` folders, or a folder with a labels
   CSV: :mod:`pneumocxr.data.external`) goes through ``predict``'s own path (same decoding and
   preprocessing as training, read from the checkpoint);
2. the temperature is refitted on the binary model's logit difference, then the threshold by
   the chosen rule (:func:`pneumocxr.calibration.choose_threshold`);
3. a bootstrap over the sample gives the CI of the threshold and of the sensitivity and
   specificity at it (in-sample: optimistic), and the sample size at which the CI of each rate
   would be as narrow as asked (normal approximation);
4. the result goes to ``site_calibration.json`` beside the binary model, which ``predict``
   then uses (and says so) instead of the pipeline's ``calibration.json``.

This is the one place where a site's labels fit anything, and never the pipeline's default.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import CALIBRATION_FORMAT, THRESHOLD_SCORE, choose_threshold, fit_temperature
from .data.external import ExternalSet, candidates_of
from .errors import InputError
from .utils import write_json

log = logging.getLogger(__name__)

SITE_FILE = "site_calibration.json"
Z95 = 1.959964


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def logit_difference(p: np.ndarray, temperature: float) -> np.ndarray:
    """The binary model's logit difference ``l_pneumonia - l_normal`` from its temperature-
    scaled p(pneumonia) (softmax of two logits is the sigmoid of their difference / T)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p)) * float(temperature)


def fit_site(d: np.ndarray, y: np.ndarray, *, rule: str, target_sensitivity: float
             ) -> dict[str, Any]:
    """Temperature and threshold (on p(pneumonia)) fitted on logit differences ``d``."""
    logits = np.stack([np.zeros_like(d), d], axis=1)
    t = fit_temperature(logits, y)
    thr = choose_threshold(y, _sigmoid(d / t), rule, target_sensitivity)
    return {"temperature": t, "operating_threshold": thr}


def required_n(rate: float, halfwidth: float) -> int:
    """Images of one class for a 95% CI of ``rate`` of about +-``halfwidth`` (Wald)."""
    r = min(max(rate, 0.01), 0.99)
    return int(math.ceil(Z95 ** 2 * r * (1 - r) / halfwidth ** 2))


def calibrate_site(predictor: Any, sample: str | Path, *, labels: str | Path | None = None,
                   rule: str = "youden", target_sensitivity: float = 0.95,
                   halfwidth: float = 0.05, n_boot: int = 1000, seed: int = 0,
                   min_side: int = 64, max_pixels: int = 100_000_000,
                   batch_size: int = 32) -> dict[str, Any]:
    """Fit the site's operating point on a labelled sample (see the module docs)."""
    from .predict import predict_files

    ext = ExternalSet("site", Path(sample), Path(labels) if labels else None, "test")
    candidates, rejected = candidates_of(ext, min_side, max_pixels)
    files = [str(ext.path / c.file) for c in candidates]
    rows = predict_files(predictor, files, batch_size=batch_size, min_side=min_side,
                         max_pixels=max_pixels)
    ok = [(r, c) for r, c in zip(rows, candidates) if r.ok]
    failed = [(c.file, r.error) for r, c in zip(rows, candidates) if not r.ok] + rejected
    if not ok:
        raise InputError(f"{sample}: no usable labelled image (see the failures: {failed[:3]})")
    y = np.array([int(c.label == "PNEUMONIA") for _, c in ok])
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError(f"{sample}: the sample needs normal and pneumonia images, got "
                         f"{n_neg} normal and {n_pos} pneumonia")
    patients = np.array([c.patient or c.file for _, c in ok])
    d = logit_difference(np.array([r.p_pneumonia for r, _ in ok]), predictor.binary.temperature)
    fit = fit_site(d, y, rule=rule, target_sensitivity=target_sensitivity)
    thr = fit["operating_threshold"]
    # bootstrap: refit on each resample (groups: patients where the names give them)
    uniq, inv = np.unique(patients, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {"threshold": [], "sensitivity": [], "specificity": []}
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        if len(np.unique(y[idx])) < 2:
            continue
        f = fit_site(d[idx], y[idx], rule=rule, target_sensitivity=target_sensitivity)
        boots["threshold"].append(f["operating_threshold"]["value"])
        pred = _sigmoid(d / f["temperature"]) >= f["operating_threshold"]["value"]
        boots["sensitivity"].append(float(pred[y == 1].mean()))
        boots["specificity"].append(float((~pred[y == 0]).mean()))
    ci = {k: {"ci_low": float(np.quantile(v, 0.025)), "ci_high": float(np.quantile(v, 0.975)),
              "n_valid": len(v)} for k, v in boots.items() if v}
    sens, spec = thr["val_sensitivity"], thr["val_specificity"]
    result = {
        "format": CALIBRATION_FORMAT, "source": "site",
        "temperature": fit["temperature"],
        "operating_threshold": {**thr, "score": THRESHOLD_SCORE,
                                "site_sensitivity": sens, "site_specificity": spec},
        "fitted_on": {"sample": str(sample), "n_images": int(len(y)), "n_normal": n_neg,
                      "n_pneumonia": n_pos, "n_failed": len(failed),
                      "bootstrap_unit": "patient" if all(c.patient for _, c in ok) else "image"},
        "ci": ci,
        "sample_size": {
            "target_ci_halfwidth": halfwidth,
            "normal_images_for_specificity": required_n(spec, halfwidth),
            "pneumonia_images_for_sensitivity": required_n(sens, halfwidth),
            "note": "images of each class for a 95% CI of about +-halfwidth around the rate "
                    "found here (normal approximation)"},
        "pipeline_operating_point": {
            "temperature": predictor.binary.temperature,
            "threshold": predictor.binary.threshold,
            "from": str(predictor.binary.calibration_path)},
        "failed": [{"file": f, "reason": r} for f, r in failed],
    }
    # note: the site's rates in "val_sensitivity/val_specificity" are in-sample ones
    log.info("site operating point from %d images (%d normal): threshold %.4f (%s), in-sample "
             "sensitivity %.3f specificity %.3f", len(y), n_neg, thr["value"], rule, sens, spec)
    return result


def write_site_calibration(result: dict[str, Any], predictor: Any, out: str | Path | None
                           ) -> Path:
    """Write ``result`` beside the binary model (``site_calibration.json``) or to ``out``."""
    path = Path(out) if out else Path(predictor.binary.path).parent / SITE_FILE
    return write_json(result, path)
