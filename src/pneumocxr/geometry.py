"""The acquisition shortcut, measured: how well the original image size alone predicts the class.

In the Kermany train split, pneumonia originals are smaller and wider than normal ones, so the
original width, height and aspect ratio separate the classes without looking at a lung; a
squashed copy (every image resized to 224 x 224, as the shared copy and many downloads are)
keeps that geometry in its pixels. The ``geometry_baseline`` stage fits a logistic regression on
``width, height, aspect`` (standardised) with patient-grouped cross-validation on the training
images and reports it on the test images, with patient-bootstrap CIs: a model that does not
beat it clearly may be reading the acquisition, not the disease.

Original sizes come from the prepared metadata (``orig_width``, ``orig_height``: the stored
size of each raw image), or, for copies that lost them, from a CSV (params
``geometry.manifest``: columns ``filename`` or ``file``, ``orig_width``, ``orig_height``;
images it does not list are left out). When every image has the same size there is nothing
to measure, and the report says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .errors import InputError, MissingInputError
from .metrics import bootstrap_cis
from .utils import write_json

log = logging.getLogger(__name__)

FEATURES = ("width", "height", "aspect")


def image_sizes(processed_dir: str | Path, manifest: str | Path | None = None) -> pd.DataFrame:
    """Rows of the prepared metadata with ``width``, ``height``, ``aspect`` (w / h) and ``y``
    (1 = pneumonia); sizes from ``manifest`` when given (matched on the file name)."""
    meta_path = Path(processed_dir) / "metadata.csv"
    if not meta_path.is_file():
        raise MissingInputError(f"{meta_path}: missing; run the prepare stage first")
    meta = pd.read_csv(meta_path, dtype={"patient": str, "file": str})
    meta["name"] = meta["file"].map(lambda f: Path(f).name)
    if manifest is not None:
        manifest = Path(manifest)
        if not manifest.is_file():
            raise MissingInputError(f"{manifest}: size manifest not found (params geometry.manifest)")
        m = pd.read_csv(manifest)
        key = "filename" if "filename" in m.columns else "file"
        missing = {key, "orig_width", "orig_height"} - set(m.columns)
        if missing:
            raise InputError(f"{manifest}: needs columns filename (or file), orig_width, "
                             f"orig_height; missing {sorted(missing)}")
        m = m.assign(name=m[key].map(lambda f: Path(str(f)).name))
        m = m.dropna(subset=["orig_width", "orig_height"]).drop_duplicates("name")
        meta = meta.drop(columns=["orig_width", "orig_height"]).merge(
            m[["name", "orig_width", "orig_height"]], on="name", how="inner")
    meta = meta.dropna(subset=["orig_width", "orig_height"])
    out = pd.DataFrame({"split": meta["split"], "file": meta["file"], "patient": meta["patient"],
                        "y": (meta["label"] == "PNEUMONIA").astype(int),
                        "width": meta["orig_width"].astype(float),
                        "height": meta["orig_height"].astype(float)})
    out["aspect"] = out["width"] / out["height"]
    return out.reset_index(drop=True)


def _auroc(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    return {"auroc": float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")}


def geometry_baseline(processed_dir: str | Path, *, manifest: str | Path | None = None,
                      folds: int = 5, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The geometry-only baseline (see the module docs) as a JSON-able dict."""
    sizes = image_sizes(processed_dir, manifest)
    train = sizes[sizes["split"].isin(["train", "val"])].reset_index(drop=True)
    test = sizes[sizes["split"] == "test"].reset_index(drop=True)
    source = str(manifest) if manifest else "prepared metadata (stored image sizes)"
    base = {"features": list(FEATURES), "sizes_from": source, "n_train": int(len(train)),
            "n_test": int(len(test))}
    if len(sizes) == 0 or sizes[["width", "height"]].nunique().max() <= 1:
        return {**base, "available": False,
                "reason": "every image has the same stored size (a resized copy): the original "
                          "sizes are unknown; give them with params geometry.manifest"}
    if train["y"].nunique() < 2 or test["y"].nunique() < 2 or len(test) < 10:
        return {**base, "available": False,
                "reason": "too few images with known sizes in train or test (both classes "
                          "needed)"}
    x_tr, y_tr, g_tr = train[list(FEATURES)].to_numpy(), train["y"].to_numpy(), train["patient"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    oof = np.zeros(len(train))
    k = min(folds, int(g_tr.nunique()))
    for tr, va in GroupKFold(n_splits=k).split(x_tr, y_tr, g_tr):
        model.fit(x_tr[tr], y_tr[tr])
        oof[va] = model.predict_proba(x_tr[va])[:, 1]
    model.fit(x_tr, y_tr)
    p_test = model.predict_proba(test[list(FEATURES)].to_numpy())[:, 1]

    def stats(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        pred = (p >= 0.5).astype(int)
        return {**_auroc(y, p), "accuracy": float((pred == y).mean())}

    cv = bootstrap_cis(stats, [y_tr, oof], groups=g_tr.to_numpy(), n_boot=n_boot, seed=seed)
    te = bootstrap_cis(stats, [test["y"].to_numpy(), p_test], groups=test["patient"].to_numpy(),
                       n_boot=n_boot, seed=seed)
    single = {}
    for name, values in (("aspect", train["aspect"]), ("area", train["width"] * train["height"])):
        a = roc_auc_score(y_tr, values)
        single[name] = {"auroc": float(max(a, 1 - a)),
                        "pneumonia_is": "larger" if a >= 0.5 else "smaller"}
    by_class = {("pneumonia" if c else "normal"): {
        "median_width": float(train.loc[train["y"] == c, "width"].median()),
        "median_height": float(train.loc[train["y"] == c, "height"].median()),
        "median_aspect": float(train.loc[train["y"] == c, "aspect"].median())} for c in (0, 1)}
    coef = model[-1].coef_[0]
    log.info("geometry-only baseline: train CV AUROC %.3f, test AUROC %.3f [%.3f, %.3f] "
             "(%d train / %d test images with known sizes)", cv["auroc"]["value"],
             te["auroc"]["value"], te["auroc"]["ci_low"], te["auroc"]["ci_high"], len(train),
             len(test))
    return {**base, "available": True, "folds": k,
            "train_cv": cv, "test": te, "single_feature_train_auroc": single,
            "train_by_class": by_class,
            "coefficients_standardised": dict(zip(FEATURES, map(float, coef))),
            "note": "logistic regression on the original image size only; CV folds and CIs "
                    "group images by patient"}


def run_geometry_baseline(processed_dir: str | Path, output: str | Path,
                          params: Mapping[str, Any], *, n_boot: int, seed: int
                          ) -> dict[str, Any]:
    """The ``geometry_baseline`` stage: ``results/shortcut/geometry.json``."""
    result = geometry_baseline(processed_dir, manifest=params.get("manifest"),
                               folds=int(params["folds"]), n_boot=n_boot, seed=seed)
    write_json(result, output)
    return result
