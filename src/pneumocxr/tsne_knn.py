"""t-SNE maps, separability and k-NN classification of a classifier's embeddings.

The ``tsne_knn`` stage (:func:`run_tsne_knn`) reads the ``embeddings.npz`` of the ``embed``
stage (:mod:`pneumocxr.embed`): k and the distance of the k-NN classifier are chosen on
``val``, it is fitted on ``train`` and compared with the network head on ``test``; t-SNE maps
and silhouette scores show how the classes separate in the embedding space.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .embed import EMBED_SPLITS, SplitEmbeddings, load_embeddings
from .errors import InputError
from .settings import KnnSettings, TsneSettings

log = logging.getLogger(__name__)


@dataclass
class TsneMap:
    """2-D t-SNE coordinates of ``index`` (rows of the embedded split)."""

    coords: np.ndarray
    index: np.ndarray
    kl_divergence: float
    params: dict[str, Any]


def subsample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted row indices: all ``n`` rows, or ``max_points`` of them drawn without replacement."""
    if max_points is None or max_points <= 0 or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def tsne_map(
    x: np.ndarray,
    *,
    perplexity: float = 30.0,
    max_iter: int = 1000,
    seed: int = 0,
    max_points: int | None = None,
    metric: str = "euclidean",
    n_threads: int = 1,
) -> TsneMap:
    """scikit-learn t-SNE of the rows of ``x`` (optionally a seeded subsample) to 2-D.

    PCA initialisation and ``random_state=seed`` make it deterministic for a seed. It runs on
    ``n_threads`` OpenMP/BLAS threads, one by default: the Barnes-Hut gradient is summed in a
    thread-dependent order, so the map changes with the thread count (measured: coordinates
    differ by up to 14 units between 1 and 2 threads on 524 points), and with more threads than
    free cores it spins and runs tens of times slower. One thread keeps the map the same
    whatever the rule's ``threads``, and takes seconds for the 2,000 points of a map.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float32)
    idx = subsample(len(x), max_points, seed)
    if len(idx) <= perplexity:
        raise InputError(
            f"t-SNE perplexity {perplexity} needs more than that many points, got {len(idx)}; "
            "lower embed.tsne.perplexity"
        )
    params = dict(perplexity=float(perplexity), max_iter=int(max_iter), seed=int(seed),
                  metric=metric, n_points=int(len(idx)))
    tsne = TSNE(n_components=2, perplexity=perplexity, max_iter=max_iter, metric=metric,
                init="pca", learning_rate="auto", random_state=seed)
    with threadpool_limits(limits=int(n_threads)):
        coords = tsne.fit_transform(x[idx]).astype(np.float32)
    return TsneMap(coords, idx, float(tsne.kl_divergence_), params)


def separability(
    x: np.ndarray,
    groups: np.ndarray,
    *,
    metrics: Sequence[str] = ("euclidean", "cosine"),
    max_points: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Silhouette score of ``x`` grouped by ``groups`` (scikit-learn), one per distance metric.

    From -1 to 1: near 1, tight and well-separated class clusters; near 0, overlapping ones.
    Undefined (``None``) with fewer than 2 groups.
    """
    from sklearn.metrics import silhouette_score

    groups = np.asarray(groups)
    idx = subsample(len(x), max_points, seed)
    out: dict[str, Any] = {"n_points": int(len(idx)),
                           "n_groups": int(len(np.unique(groups[idx])))}
    for metric in metrics:
        key = f"silhouette_{metric}"
        if out["n_groups"] < 2 or out["n_groups"] >= len(idx):
            out[key] = None
        else:
            out[key] = float(silhouette_score(x[idx], groups[idx], metric=metric))
    return out


def separability_report(se: SplitEmbeddings, class_names: Sequence[str], *, seed: int = 0,
                        max_points: int | None = None) -> dict[str, Any]:
    """Silhouette scores of one split by the task's classes, and by the two questions the study
    asks of every model: normal vs pneumonia, and bacteria vs virus among pneumonia images."""
    kw = dict(seed=seed, max_points=max_points)
    report = {"by_task_class": separability(se.embeddings, se.y, **kw),
              "normal_vs_pneumonia": separability(se.embeddings, se.label, **kw)}
    if se.has_subtypes:
        pneu = se.label == "PNEUMONIA"
        report["bacteria_vs_virus"] = separability(se.embeddings[pneu], se.subtype[pneu], **kw)
    report["classes"] = list(class_names)
    return report


# --------------------------------------------------------------------------------------------
# the tsne_knn stage


def run_tsne_knn(
    embeddings: str | Path,
    *,
    tsne_png: str | Path,
    confusion_png: str | Path,
    index_path: str | Path,
    metrics_path: str | Path,
    seed: int = 0,
    tsne: TsneSettings | Mapping[str, Any] | None = None,
    knn: KnnSettings | Mapping[str, Any] | None = None,
    bootstrap: int,
) -> dict[str, Any]:
    """The ``tsne_knn`` stage: t-SNE maps, k-NN selection/fit/evaluation, metrics JSON.

    k and the distance are chosen on ``val`` (``knn.select_by``), the classifier is fitted on
    ``train`` and evaluated on ``test`` next to the network head's predictions for the same
    images. Writes the t-SNE figure, the confusion-matrix figure, the k-NN index and the metrics;
    logs the wall-clock seconds of each step (kept out of the metrics so they stay reproducible).
    """
    from . import knn as knnlib
    from .plots import embed as plots

    tsne = TsneSettings.from_params(tsne)
    knn = KnnSettings.from_params(knn)
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        log.info("%s: %.1f s", step, now - clock)
        clock = now

    emb = load_embeddings(embeddings)
    for split in EMBED_SPLITS:
        if split not in emb.splits:
            raise InputError(f"{embeddings}: split {split!r} was not embedded (have "
                             f"{sorted(emb.splits)}); rerun the embed stage with train, val, test")
    train, val, test = emb["train"], emb["val"], emb["test"]
    names = emb.class_names

    selection = knnlib.select_knn(
        train.embeddings, train.y, val.embeddings, val.y, ks=list(knn.k), metrics=list(knn.metrics),
        criterion=knn.select_by, weights=knn.weights)
    log.info("k-NN chosen on val: k=%d metric=%s (%s %.4f)", selection.k, selection.metric,
             selection.criterion, selection.score)
    index = knnlib.build_index(
        train.embeddings, train.y, train.file, class_names=names, k=selection.k,
        metric=selection.metric, weights=knn.weights,
        info={"task": emb.task, "arch": emb.arch, "data_source": emb.data_source,
              "select_by": selection.criterion, "val_score": selection.score,
              "embeddings": str(embeddings)})
    knnlib.save_knn_index(index, index_path)
    pred = knnlib.knn_predict(index, test.embeddings)
    lap("knn_select_fit_predict")

    knn_metrics = knnlib.classification_metrics(
        test.y, pred.pred, names, groups=test.patient, n_boot=bootstrap, seed=seed)
    head_metrics = knnlib.classification_metrics(
        test.y, test.head_pred, names, groups=test.patient, n_boot=bootstrap, seed=seed)
    diff = knnlib.accuracy_difference(test.y, pred.pred, test.head_pred, groups=test.patient,
                                      n_boot=bootstrap, seed=seed)
    head_val = knnlib.CRITERIA[selection.criterion](val.y, val.head_pred)
    sep = separability_report(test, names, seed=seed)
    lap("metrics_bootstrap_silhouette")

    maps = [("test", tsne_map(test.embeddings, perplexity=tsne.perplexity,
                              max_iter=tsne.max_iter, seed=seed,
                              max_points=tsne.max_points, metric=tsne.metric), test)]
    lap("tsne_test")
    if tsne.train_points and tsne.train_points > 0:
        maps.append(("train", tsne_map(train.embeddings, perplexity=tsne.perplexity,
                                       max_iter=tsne.max_iter, seed=seed,
                                       max_points=tsne.train_points, metric=tsne.metric),
                     train))
        lap("tsne_train")

    sil = sep["by_task_class"]["silhouette_euclidean"]
    fig = plots.plot_tsne(
        [(m.coords, se.y[m.index], f"{split} ({len(m.index)} images)") for split, m, se in maps],
        names, f"t-SNE of {emb.arch} embeddings, {emb.task} task", emb.data_source,
        note=None if sil is None else f"silhouette (test, {emb.dim}-d, euclidean) = {sil:.3f}")
    plots.save(fig, tsne_png)
    fig = plots.plot_confusion_grid(
        {f"k-NN (k={selection.k}, {selection.metric})": knn_metrics["confusion_matrix"],
         "network head": head_metrics["confusion_matrix"]},
        names, f"{emb.arch} {emb.task}: k-NN vs network head on test", emb.data_source)
    plots.save(fig, confusion_png)
    lap("figures")

    metrics = {
        "data_source": emb.data_source,
        "task": emb.task,
        "arch": emb.arch,
        "class_names": names,
        "split": "test",
        "n_train": len(train), "n_val": len(val), "n_test": len(test),
        "embedding_dim": emb.dim,
        "selection": {"split": "val", "criterion": selection.criterion, "k": selection.k,
                      "metric": selection.metric, "weights": knn.weights,
                      "val_score": selection.score, "network_head_val_score": float(head_val),
                      "candidates": selection.candidates},
        "knn": knn_metrics,
        "network_head": head_metrics,
        "knn_minus_head_accuracy": diff,
        "agreement": float(np.mean(pred.pred == test.head_pred)),
        "separability": sep,
        "tsne": [{"split": split, **m.params, "kl_divergence": m.kl_divergence}
                 for split, m, _ in maps],
        "bootstrap": {"n_boot": int(bootstrap), "seed": int(seed), "groups": "patient"},
    }
    path = Path(metrics_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(knnlib.jsonable(metrics), indent=2, allow_nan=False) + "\n")
    log.info("k-NN test accuracy %.4f vs network head %.4f (%s %s)",
             knn_metrics["accuracy"], head_metrics["accuracy"], emb.task, emb.arch)
    return metrics
