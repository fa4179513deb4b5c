"""k-nearest-neighbour classification in a classifier's embedding space (scikit-learn).

- :func:`select_knn` chooses ``k`` and the distance (``cosine`` / ``euclidean``) on the
  validation split. The criterion is **balanced accuracy** by default (mean per-class recall:
  the data are about 3 pneumonia : 1 normal, and plain accuracy rewards a k that votes for the
  majority class); ``accuracy`` is the alternative. Ties go to the smaller ``k``, then to the
  metric listed first.
- :func:`build_index` fits it on the training embeddings; the :class:`KnnIndex` keeps those
  embeddings with their labels and image ids, so :func:`knn_predict` can list the nearest
  training images of a new image. :func:`save_knn_index` / :func:`load_knn_index` store it as a
  pickle-free ``.npz`` next to the model.
- :func:`classification_metrics` reports accuracy (with a patient-bootstrap CI), balanced
  accuracy, per-class precision / recall / F1 and the confusion matrix.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)
from sklearn.neighbors import KNeighborsClassifier

from .errors import InputError, MissingInputError
from .metrics import bootstrap_ci
from .utils import jsonable

log = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean")
WEIGHTS = ("uniform", "distance")
CRITERIA: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "balanced_accuracy": balanced_accuracy_score,
    "accuracy": accuracy_score,
}
INDEX_VERSION = 1


def _check_xy(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if x.ndim != 2:
        raise InputError(f"{what} embeddings must be 2-D (N, D), got shape {x.shape}")
    if len(x) != len(y):
        raise InputError(f"{what}: {len(x)} embeddings but {len(y)} labels")
    if len(x) == 0:
        raise InputError(f"{what}: no embeddings")
    return x, y


def make_classifier(k: int, metric: str, weights: str = "uniform") -> KNeighborsClassifier:
    """An unfitted scikit-learn k-NN classifier (brute-force search: exact, any metric)."""
    if metric not in METRICS:
        raise InputError(f"k-NN metric must be one of {METRICS}, got {metric!r}")
    if weights not in WEIGHTS:
        raise InputError(f"k-NN weights must be one of {WEIGHTS}, got {weights!r}")
    if int(k) < 1:
        raise InputError(f"k must be >= 1, got {k}")
    return KNeighborsClassifier(n_neighbors=int(k), metric=metric, weights=weights,
                                algorithm="brute")


@dataclass
class KnnSelection:
    """The chosen ``k`` and metric, the validation score and every candidate's score."""

    k: int
    metric: str
    criterion: str
    score: float
    candidates: list[dict[str, Any]]


def select_knn(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    ks: Sequence[int] = (1, 3, 5, 7, 11, 15, 21, 31),
    metrics: Sequence[str] = METRICS,
    criterion: str = "balanced_accuracy",
    weights: str = "uniform",
) -> KnnSelection:
    """Choose ``k`` and the distance on validation: fit on train, score on val, keep the best.

    Candidates with ``k`` larger than the training set are skipped (logged). Ties go to the
    smaller ``k``, then to the metric listed first.
    """
    train_x, train_y = _check_xy(train_x, train_y, "train")
    val_x, val_y = _check_xy(val_x, val_y, "val")
    if train_x.shape[1] != val_x.shape[1]:
        raise InputError(f"train embeddings are {train_x.shape[1]}-d but val {val_x.shape[1]}-d")
    if criterion not in CRITERIA:
        raise InputError(f"k-NN selection criterion must be one of {sorted(CRITERIA)}, "
                         f"got {criterion!r}")
    if not metrics:
        raise InputError("no k-NN metric to try; list cosine and/or euclidean")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise InputError(f"k-NN metrics must be among {METRICS}, got {bad}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise InputError(f"k candidates must be positive integers, got {ks}")
    usable = [k for k in ks if k <= len(train_x)]
    if len(usable) < len(ks):
        log.warning("skipping k > %d (the training set size): %s", len(train_x),
                    [k for k in ks if k > len(train_x)])
    if not usable:
        raise InputError(f"every k candidate {ks} exceeds the {len(train_x)} training embeddings")

    score_fn = CRITERIA[criterion]
    candidates: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for k in usable:
        for metric in metrics:
            clf = make_classifier(k, metric, weights).fit(train_x, train_y)
            pred = clf.predict(val_x)
            row = {"k": k, "metric": metric, "score": float(score_fn(val_y, pred)),
                   "accuracy": float(accuracy_score(val_y, pred))}
            candidates.append(row)
            if best is None or row["score"] > best["score"]:
                best = row
    assert best is not None  # usable and metrics are non-empty
    return KnnSelection(best["k"], best["metric"], criterion, best["score"], candidates)


# --------------------------------------------------------------------------------------------
# the index


@dataclass
class KnnIndex:
    """A fitted k-NN classifier with the training embeddings, labels and image ids behind it."""

    embeddings: np.ndarray
    labels: np.ndarray
    files: np.ndarray
    class_names: list[str]
    k: int
    metric: str
    weights: str = "uniform"
    info: dict[str, Any] = field(default_factory=dict)
    _clf: KNeighborsClassifier | None = field(default=None, init=False, repr=False,
                                              compare=False)

    def __post_init__(self) -> None:
        self.embeddings, self.labels = _check_xy(self.embeddings, self.labels, "index")
        self.labels = self.labels.astype(np.int64)
        self.files = np.asarray(self.files).astype(str)
        if len(self.files) != len(self.labels):
            raise InputError(f"index: {len(self.files)} file ids for {len(self.labels)} labels")
        if self.labels.min() < 0 or self.labels.max() >= len(self.class_names):
            raise InputError(f"index labels must be 0..{len(self.class_names) - 1} "
                             f"(class_names {self.class_names})")
        if self.k > len(self.embeddings):
            raise InputError(f"k={self.k} exceeds the {len(self.embeddings)} indexed embeddings")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def classifier(self) -> KNeighborsClassifier:
        """The scikit-learn classifier, fitted on first use."""
        if self._clf is None:
            self._clf = make_classifier(self.k, self.metric, self.weights).fit(
                self.embeddings, self.labels)
        return self._clf


def build_index(
    embeddings: np.ndarray,
    labels: np.ndarray,
    files: Sequence[str] | np.ndarray,
    *,
    class_names: Sequence[str],
    k: int,
    metric: str,
    weights: str = "uniform",
    info: Mapping[str, Any] | None = None,
) -> KnnIndex:
    """Fit the k-NN classifier on training embeddings and keep them for neighbour lookups."""
    index = KnnIndex(embeddings, labels, np.asarray(files), list(class_names), int(k), metric,
                     weights, dict(info or {}))
    index.classifier  # noqa: B018 - fit now, so a bad setting fails here, not at predict time
    return index


class KnnPrediction(NamedTuple):
    """k-NN output for each query row."""

    pred: np.ndarray            # (N,) class index
    proba: np.ndarray           # (N, C) share of neighbour votes per class (class_names order)
    neighbour_files: np.ndarray  # (N, k) ids of the nearest training images, nearest first
    distances: np.ndarray       # (N, k) their distances under the index's metric


def knn_predict(index: KnnIndex, embeddings: np.ndarray) -> KnnPrediction:
    """Classify embeddings by their neighbours and list the nearest training images."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != index.dim:
        raise InputError(
            f"embeddings of shape {x.shape} do not match the k-NN index ({index.dim}-d, "
            f"{index.info.get('arch', '?')} {index.info.get('task', '?')}); embed with the "
            "model the index was built from"
        )
    clf = index.classifier
    proba_fitted = clf.predict_proba(x)
    proba = np.zeros((len(x), len(index.class_names)), dtype=np.float64)
    proba[:, clf.classes_.astype(int)] = proba_fitted
    pred = clf.predict(x).astype(np.int64)
    distances, nbr = clf.kneighbors(x, n_neighbors=index.k)
    return KnnPrediction(pred, proba, index.files[nbr], distances.astype(np.float32))


def save_knn_index(index: KnnIndex, path: str | Path) -> Path:
    """Write the index as a pickle-free ``.npz`` (atomic rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": INDEX_VERSION, "class_names": list(index.class_names), "k": index.k,
            "metric": index.metric, "weights": index.weights, "info": jsonable(index.info)}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta, sort_keys=True)),
                 embeddings=index.embeddings.astype(np.float32), labels=index.labels,
                 files=index.files.astype(str))
    os.replace(tmp, path)
    return path


def load_knn_index(path: str | Path) -> KnnIndex:
    """Read an index written by :func:`save_knn_index`."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: k-NN index not found; run the tsne_knn stage first")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable k-NN index ({err})") from None
    if not hasattr(data, "files"):
        raise InputError(f"{path}: a single array, not a pneumocxr k-NN index (.npz)")
    with data:
        missing = {"meta", "embeddings", "labels", "files"} - set(data.files)
        if missing:
            raise InputError(f"{path}: not a pneumocxr k-NN index (missing {sorted(missing)})")
        meta = json.loads(str(data["meta"]))
        if meta.get("version") != INDEX_VERSION:
            raise InputError(f"{path}: k-NN index version {meta.get('version')}, this code reads "
                             f"{INDEX_VERSION}; rerun the tsne_knn stage")
        return KnnIndex(data["embeddings"], data["labels"], data["files"], meta["class_names"],
                        int(meta["k"]), meta["metric"], meta["weights"], meta.get("info", {}))


# --------------------------------------------------------------------------------------------
# evaluation


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of correct predictions: ``accuracy_score`` without its input validation, which
    dominates the cost of a 1000-replicate bootstrap (about 10x slower)."""
    return float(np.mean(y_true == y_pred))


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy (95% bootstrap CI resampling ``groups``, i.e. patients), balanced accuracy,
    per-class precision / recall / F1 / support and the confusion matrix (rows: true class).

    Undefined ratios (a class never predicted) are NaN (``null`` in JSON).
    """
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    labels = list(range(len(class_names)))
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=np.nan)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "accuracy_ci95": bootstrap_ci(_accuracy, [y_true, y_pred], groups=groups,
                                      n_boot=n_boot, seed=seed),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "per_class": {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        "n": int(len(y_true)),
    }


def accuracy_difference(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy of ``pred_a`` minus that of ``pred_b`` on the same images, with a paired
    patient-bootstrap 95% CI (both predictions resampled together)."""

    def diff(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return _accuracy(y, a) - _accuracy(y, b)

    return bootstrap_ci(diff, [np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)],
                        groups=groups, n_boot=n_boot, seed=seed)
