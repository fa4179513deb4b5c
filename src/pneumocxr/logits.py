"""What a classifier's logits mean, and the file they are kept in.

* :func:`probabilities` -- softmax of logits divided by a temperature;
* :func:`pneumonia_score` -- p(pneumonia) = 1 - p(normal) in both tasks (class 0 is normal);
* :func:`fold_logits` -- logits of groups of classes (a folded classifier's, ``train.joint_head``);
* :func:`write_predictions` / :func:`read_predictions` -- one split's logits as CSV (training
  writes the selected model's val logits; the ``calibrate`` stage reads them).

NumPy only, so calibrating (or predicting) does not depend on the training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
from scipy.special import logsumexp, softmax

from .errors import InputError, MissingInputError

if TYPE_CHECKING:  # pragma: no cover
    from .datasets import ArrayDataset


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature``."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def pneumonia_score(probs: np.ndarray) -> np.ndarray:
    """p(pneumonia) = 1 - p(normal); class 0 is normal in both tasks."""
    return 1.0 - np.asarray(probs)[:, 0]


def fold_logits(logits: np.ndarray, fold: Sequence[Sequence[int]]) -> np.ndarray:
    """One logit per group of ``fold``: the log-sum-exp of its classes' logits, so the softmax
    of the result is the sum of each group's probabilities (as :class:`pneumocxr.models.
    Classifier` computes it for a folded checkpoint)."""
    z = np.asarray(logits, dtype=np.float64)
    return np.stack([logsumexp(z[:, list(g)], axis=1) for g in fold], axis=1)


@dataclass(frozen=True)
class Predictions:
    """Logits of one split as written by :func:`write_predictions` (rows in split order)."""

    logits: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    files: np.ndarray
    patients: np.ndarray


def write_predictions(path: str | Path, logits: np.ndarray, data: ArrayDataset) -> Path:
    """``file, patient, label, logit_<class>...`` of one split (logits exact: 9 digits)."""
    n = len(data)
    return write_predictions_table(path, Predictions(
        np.asarray(logits), data.labels, tuple(data.class_names),
        data.meta["file"].to_numpy() if data.meta is not None else np.arange(n),
        data.patients if data.patients is not None else np.arange(n)))


def write_predictions_table(path: str | Path, pred: Predictions) -> Path:
    """Write ``pred`` in the format of :func:`write_predictions`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"file": pred.files, "patient": pred.patients, "label": pred.labels})
    for i, name in enumerate(pred.class_names):
        df[f"logit_{name}"] = np.asarray(pred.logits)[:, i]
    df.to_csv(path, index=False, float_format="%.9g")
    return path


def read_predictions(path: str | Path, class_names: Sequence[str] | None = None) -> Predictions:
    """Read a file of :func:`write_predictions`; the classes are its ``logit_*`` columns."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: predictions file not found")
    df = pd.read_csv(path, dtype={"file": str, "patient": str})
    cols = [c for c in df.columns if c.startswith("logit_")]
    missing = {"file", "patient", "label"} - set(df.columns)
    if missing or len(cols) < 2:
        raise InputError(f"{path}: expected columns file, patient, label and logit_<class> "
                         f"(at least two); missing {sorted(missing) or 'logit columns'}")
    names = tuple(c.removeprefix("logit_") for c in cols)
    if class_names is not None and tuple(class_names) != names:
        raise InputError(f"{path}: classes {list(names)} differ from {list(class_names)}")
    labels = df["label"].to_numpy().astype(int)
    if labels.min() < 0 or labels.max() >= len(names):
        raise InputError(f"{path}: labels must lie in [0, {len(names)})")
    return Predictions(df[cols].to_numpy(np.float64), labels, names,
                       df["file"].to_numpy(), df["patient"].to_numpy())
