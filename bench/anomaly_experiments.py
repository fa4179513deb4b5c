"""Experiments behind the anomaly stage's design: which autoencoder and, above all, which score.

Pneumonia X-rays are hazier than normal ones, so errors that count lost detail rank them as
*less* anomalous than normals (issue 5 measured the mean squared error of a plain autoencoder
at AUROC 0.30). This script trains the autoencoders compared in the note (the default setting,
a second seed, a variational variant, a smaller code; snapshots every 5 epochs and the
untrained network as a control) and scores each with every candidate score of
:mod:`pneumocxr.anomaly` (pixel and structural errors, feature-space errors, densities fitted
on the normal training images), with the threshold chosen on ``val`` (EER) and applied to
``test``. :func:`select_score` picks the default score on ``val`` only;
:func:`acquisition_check` asks whether a score's ranking survives holding the original image
geometry fixed.

Data: the shared Kermany copy (``../shared/data/kermany``), decoded once into a prepared-format
folder (``metadata.csv``, ``info.json``, ``<variant>/<split>.npy``; :func:`build_arrays`) in
``/tmp`` so the library reads it with ``load_split`` exactly as the stage does: grayscale, CLAHE
(clip 2, tile 8), shorter side 146, center crop 128; ``val`` = ~10% of the train patients
(patient-grouped, label-stratified); ``test`` = the shared dev test split (patient-disjoint).

    .venv/bin/python bench/anomaly_experiments.py all          # everything (hours on 2 CPUs)
    .venv/bin/python bench/anomaly_experiments.py train --name ae_seed42
    .venv/bin/python bench/anomaly_experiments.py score --name ae_seed42 [--epoch 15]
    .venv/bin/python bench/anomaly_experiments.py stage        # the evaluation stage, real data
    .venv/bin/python bench/anomaly_experiments.py collect      # -> bench/results/*.json

Training is resumable (the library's ResumeCache under the scratch folder); scores of each
(model, epoch) are cached as JSON there, and ``collect`` gathers them into
``bench/results/anomaly_experiments.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold

from pneumocxr import models
from pneumocxr.anomaly import evaluate as ae_eval
from pneumocxr.anomaly import scores
from pneumocxr.anomaly import train as ae_train
from pneumocxr.checkpoint import ResumeCache, params_key, save_checkpoint
from pneumocxr.data.arrays import load_split
from pneumocxr.metrics import auroc, binary_rates, eer_threshold
from pneumocxr.utils import set_determinism

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "kermany"
SCRATCH = Path("/tmp/anomaly_scratch")
DATA = Path("/tmp/pneumocxr_anomaly_data")
RESULTS = REPO / "bench" / "results" / "anomaly_experiments.json"

BASE = {"input_size": 128, "channels": [16, 32, 64, 128], "latent_dim": 128, "epochs": 30,
        "batch_size": 32, "lr": 1e-3, "seed": 42}

#: The autoencoders compared: name -> (config over BASE, prepared variant, what it tests).
EXPERIMENTS: dict[str, tuple[dict, str, str]] = {
    "ae_seed42": ({}, "clahe", "the study's setting: conv AE, CLAHE, 128 px, MSE, 30 epochs"),
    "vae_seed42": ({"variational": True, "kl_weight": 1.0, "epochs": 15}, "clahe",
                   "variational variant (KL weight 1 per image, loss per pixel), 15 epochs"),
    "ae_seed1": ({"seed": 1, "epochs": 15}, "clahe", "another seed, 15 epochs (seed spread)"),
    "ae_seed1_e30": ({"seed": 1}, "clahe",
                     "seed 1 to 30 epochs: the default setting on a second seed (continued from "
                     "ae_seed1's epoch-15 state; no schedule depends on the epoch count, so the "
                     "first 15 epochs are the same)"),
    "ae_latent32": ({"latent_dim": 32, "epochs": 15}, "clahe",
                    "a 4x smaller code (32), 15 epochs: does a tighter bottleneck keep the code "
                    "on global appearance?"),
    "ae_plain": ({}, "plain", "the default setting without CLAHE (the plain prepared variant)"),
    "ae_latent32_e30": ({"latent_dim": 32}, "clahe",
                        "code 32 to 30 epochs (continued from ae_latent32's epoch-15 state)"),
}


#: Runs that continue another run's final state (same config except the epoch count; Adam at a
#: constant learning rate and per-epoch state make the first epochs identical).
CONTINUES = {"ae_seed1_e30": "ae_seed1", "ae_latent32_e30": "ae_latent32"}


# ----------------------------------------------------------------------------- data


def _load(path: Path, clahe: cv2.CLAHE | None, resize: int, crop: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(f"{path}: unreadable image")
    if clahe is not None:
        img = clahe.apply(img)
    h, w = img.shape
    scale = resize / min(h, w)
    img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    h, w = img.shape
    top, left = (h - crop) // 2, (w - crop) // 2
    return img[top:top + crop, left:left + crop]


def build_arrays(out: Path = DATA, root: Path = SHARED, resize: int = 146, crop: int = 128,
                 val_fraction: float = 0.1, seed: int = 42) -> Path:
    """Write the prepared-format folder ``out`` from the shared Kermany copy (once)."""
    out = Path(out)
    if (out / "info.json").is_file():
        return out
    if not (root / "manifest.csv").is_file():
        raise FileNotFoundError(f"{root / 'manifest.csv'}: the shared Kermany data is missing")
    manifest = pd.read_csv(root / "manifest.csv", dtype=str)
    manifest = manifest[manifest["split"].isin(["train", "test"])].reset_index(drop=True)
    train = manifest[manifest["split"] == "train"]
    sgkf = StratifiedGroupKFold(n_splits=round(1 / val_fraction), shuffle=True,
                                random_state=seed)
    _, val_idx = next(sgkf.split(train, train["label"], groups=train["patient_key"]))
    manifest.loc[train.index[val_idx], "split"] = "val"
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    rows, arrays = [], {"plain": {}, "clahe": {}}
    for split in ("train", "val", "test"):
        part = manifest[manifest["split"] == split].sort_values("filename").reset_index(drop=True)
        plain, eq = [], []
        for i, row in enumerate(part.itertuples()):
            path = root.parent / row.path
            plain.append(_load(path, None, resize, crop))
            eq.append(_load(path, clahe, resize, crop))
            rows.append({"split": split, "index": i, "file": row.filename,
                         "official_split": row.official_split, "label": row.label,
                         "subtype": row.subtype, "patient": row.patient_key,
                         "sha256": row.sha256, "orig_width": 224, "orig_height": 224})
        arrays["plain"][split] = np.stack(plain)
        arrays["clahe"][split] = np.stack(eq)
    for variant, splits in arrays.items():
        (out / variant).mkdir(parents=True, exist_ok=True)
        for split, arr in splits.items():
            np.save(out / variant / f"{split}.npy", arr)
    pd.DataFrame(rows).to_csv(out / "metadata.csv", index=False)
    info = {"data_source": "kermany", "root": str(root / "chest_xray"), "resize": resize,
            "crop": crop, "variants": ["plain", "clahe"],
            "clahe": {"clip_limit": 2.0, "tile_grid": 8},
            "counts": {s: int(len(a)) for s, a in arrays["plain"].items()}}
    (out / "info.json").write_text(json.dumps(info, indent=2))
    return out


# ----------------------------------------------------------------------------- training


def _cfg(name: str) -> tuple[dict, str]:
    over, variant, _ = EXPERIMENTS[name]
    return BASE | over, variant


def _key(name: str) -> str:
    cfg, variant = _cfg(name)
    return params_key(cfg, variant)


def _model(cfg: dict) -> models.ConvAutoencoder:
    return models.ConvAutoencoder(cfg["input_size"], cfg["channels"], cfg["latent_dim"],
                                   variational=cfg.get("variational", False))


def train(name: str, progress: bool = False) -> Path:
    """Train one autoencoder (resumable); weights every 5 epochs and the best/last at the end."""
    cfg, variant = _cfg(name)
    key = _key(name)
    out = SCRATCH / "models" / f"{key}.pt"
    if out.is_file():
        return out
    cache = ResumeCache("anomaly_exp", key, SCRATCH / "resume")
    snaps = SCRATCH / "snapshots" / key
    snaps.mkdir(parents=True, exist_ok=True)
    if name in CONTINUES and cache.load() is None:
        src = CONTINUES[name]
        train(src, progress)
        cache.dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(SCRATCH / "resume" / "anomaly_exp" / _key(src) / "state.pt", cache.path)
        for f in (SCRATCH / "snapshots" / _key(src)).glob("*.pt"):
            shutil.copy(f, snaps / f.name)
    set_determinism(cfg["seed"])
    tr = load_split(DATA, "train", variant)
    va = load_split(DATA, "val", variant)
    s = cfg["input_size"]
    x = models.autoencoder_input(tr.images[tr.y_binary == 0], s)
    xv = models.autoencoder_input(va.images[va.y_binary == 0], s)
    model = _model(cfg)

    def snapshot(epoch: int, row: dict) -> None:
        if epoch % 5 == 0:
            torch.save(model.state_dict(), snaps / f"epoch{epoch:03d}.pt")

    t0 = time.time()
    res = ae_train.fit_autoencoder(model, x, xv, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                                  lr=cfg["lr"], kl_weight=cfg.get("kl_weight", 1.0),
                                  seed=cfg["seed"], cache=cache, progress=progress,
                                  on_epoch_end=snapshot)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"best": res["best_state"], "last": model.state_dict(), "cfg": cfg,
                "variant": variant, "history": res["history"], "best_epoch": res["best_epoch"],
                "seconds": time.time() - t0}, out)
    return out


# ----------------------------------------------------------------------------- scoring


def candidate_scores() -> dict[str, scores.AnomalyScore]:
    """Every score variant compared (name -> unfitted scorer)."""
    c: dict[str, scores.AnomalyScore] = {}
    for kind in ("mse", "ssim", "gradient"):
        c[f"{kind}_mean"] = scores.ReconstructionError(kind, "mean")
        c[f"{kind}_top1pct"] = scores.ReconstructionError(kind, "topk", 0.01)
    for pct in (0.5, 2, 5):  # the aggregation's fraction for the structural error
        c[f"ssim_top{pct}pct"] = scores.ReconstructionError("ssim", "topk", pct / 100)
    c["feature_error_mean"] = scores.FeatureError("mean")
    c["latent_mahalanobis"] = scores.LatentDensity("mahalanobis")
    c["latent_knn5"] = scores.LatentDensity("knn", 5)
    c["feature_stats_all"] = scores.FeatureStatsDensity()
    for lv in range(4):
        c[f"feature_stats_L{lv}"] = scores.FeatureStatsDensity([lv])
    c["feature_stats_L01"] = scores.FeatureStatsDensity([0, 1])
    for lv in (1, 2, 3):
        c[f"patch_L{lv}_mean"] = scores.PatchDensity(lv, "mean")
        c[f"patch_L{lv}_top10pct"] = scores.PatchDensity(lv, "topk", 0.1)
    return c


def _forwards(model, x, batch_size=64, recon_feats=True):
    for i in range(0, len(x), batch_size):
        yield scores.forward_batch(model, x[i:i + batch_size], recon_feats=recon_feats)


def _load_model(name: str, epoch: int | None) -> tuple[models.ConvAutoencoder, int]:
    """The weights of ``name``: best (None), untrained (0) or the snapshot of ``epoch``."""
    cfg, _ = _cfg(name)
    key = _key(name)
    if epoch == 0:
        set_determinism(cfg["seed"])
        return _model(cfg), 0
    model = _model(cfg)
    if epoch is None:
        model_file = SCRATCH / "models" / f"{key}.pt"
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file}: train {name} first")
        ck = torch.load(model_file, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["best"])
        return model, ck["best_epoch"]
    model.load_state_dict(torch.load(SCRATCH / "snapshots" / key / f"epoch{epoch:03d}.pt"))
    return model, epoch


def score(name: str, epoch: int | None = None) -> dict:
    """Fit every candidate score on train normals; AUROC on val and test, EER-threshold rates.

    ``epoch``: score the weights saved at that epoch instead of the best (lowest val MSE) ones;
    0 scores the untrained network (seeded initialisation), a control for what training adds.
    Incremental: candidates already in the cache are not recomputed.
    """
    key = _key(name)
    cache = SCRATCH / "scores" / f"{name}_{key}_{'best' if epoch is None else epoch}.json"
    old, values = {}, {"val": {}, "test": {}}
    if cache.is_file():
        old = json.loads(cache.read_text())
        with np.load(cache.with_suffix(".npz")) as z:
            for k in z.files:
                split, cand = k.split("/", 1)
                values[split][cand] = z[k]
    scorers = {k: v for k, v in candidate_scores().items() if k not in values["test"]}
    if not scorers:
        return old
    cfg, variant = _cfg(name)
    s = cfg["input_size"]
    model, at_epoch = _load_model(name, epoch)
    tr = load_split(DATA, "train", variant)
    fw_train = list(_forwards(model, models.autoencoder_input(tr.images[tr.y_binary == 0], s)))
    fitted: dict = {}
    for sc in scorers.values():  # scores that differ only in aggregation share one fit
        fit_key = (type(sc).__name__, getattr(sc, "level", None),
                   str(getattr(sc, "levels", None)), getattr(sc, "kind", None),
                   getattr(sc, "k", None))
        if fit_key in fitted and sc.needs_fit:
            sc.load_state_dict(fitted[fit_key])
        else:
            fitted[fit_key] = sc.fit(fw_train).state_dict()
    del fw_train
    labels, subtypes = {}, {}
    for split in ("val", "test"):
        d = load_split(DATA, split, variant)
        labels[split], subtypes[split] = d.y_binary, d.meta["subtype"].to_numpy()
        out = {k: [] for k in scorers}
        for fw in _forwards(model, models.autoencoder_input(d.images, s)):
            for k, sc in scorers.items():
                out[k].append(sc.score(fw))
        values[split].update({k: torch.cat(v).numpy() for k, v in out.items()})
    order = [k for k in candidate_scores() if k in values["test"]]
    results = {}
    for k in order:
        thr = eer_threshold(labels["val"], values["val"][k])
        pred = values["test"][k] >= thr["threshold"]
        rates = binary_rates(labels["test"], pred)
        results[k] = {
            "val_auroc": auroc(labels["val"], values["val"][k]),
            "test_auroc": auroc(labels["test"], values["test"][k]),
            "val_eer_gap": thr["gap"], "val_fpr": thr["fpr"], "val_fnr": thr["fnr"],
            "test_sensitivity": rates["sensitivity"], "test_specificity": rates["specificity"],
            "test_flagged_bacteria": float(pred[subtypes["test"] == "bacteria"].mean()),
            "test_flagged_virus": float(pred[subtypes["test"] == "virus"].mean()),
        }
        print(f"{name} epoch {'best' if epoch is None else epoch} {k:22s} "
              f"val {results[k]['val_auroc']:.3f} test {results[k]['test_auroc']:.3f} "
              f"sens {rates['sensitivity']:.3f} spec {rates['specificity']:.3f}", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache.with_suffix(".npz"), **{f"{split}/{k}": values[split][k]
                                           for split in values for k in order})
    row = {"name": name, "epoch": at_epoch,
           "weights": "best (lowest val normal MSE)" if epoch is None else
           "untrained (initialisation)" if epoch == 0 else "snapshot",
           "scores": results, "acquisition_check": acquisition_check(
               {k: np.concatenate([values["val"][k], values["test"][k]]) for k in order})}
    cache.write_text(json.dumps(row, indent=1))
    return row


def stratified_auroc(y: np.ndarray, s: np.ndarray, strata: np.ndarray) -> float:
    """AUROC counting only (normal, pneumonia) pairs from the same stratum: the ranking a
    score achieves once the stratifying variable is held (roughly) fixed."""
    num = den = 0.0
    for g in np.unique(strata):
        m = strata == g
        n0, n1 = int((y[m] == 0).sum()), int((y[m] == 1).sum())
        if n0 and n1:
            num += auroc(y[m], s[m]) * n0 * n1
            den += n0 * n1
    return num / den if den else float("nan")


def acquisition_check(scores: dict[str, np.ndarray]) -> dict:
    """How much of a score's ranking survives holding the original image geometry fixed.

    Kermany pneumonia originals are smaller and wider than normal ones (the shared copy
    squashes all to 224 x 224), so a detector of 'unlike normal' may flag geometry as well as
    opacities. On the held-out images whose original size is known (``manifest.csv``), compare
    the plain AUROC with the AUROC stratified by quintiles of the original aspect ratio.
    ``scores``: per-image scores on val then test (the order of :func:`load_split`).
    """
    meta = pd.concat([load_split(DATA, sp, "clahe").meta for sp in ("val", "test")],
                     ignore_index=True)
    man = pd.read_csv(SHARED / "manifest.csv", usecols=["filename", "orig_width", "orig_height"])
    sizes = meta[["file"]].merge(man, left_on="file", right_on="filename", how="left")
    known = sizes["orig_width"].notna().to_numpy()
    y = (meta["label"].to_numpy() == "PNEUMONIA").astype(int)[known]
    aspect = (sizes["orig_width"] / sizes["orig_height"]).to_numpy()[known]
    bins = np.quantile(aspect, [0.2, 0.4, 0.6, 0.8])
    strata = np.digitize(aspect, bins)
    out = {"n": int(known.sum()), "n_normal": int((y == 0).sum()),
           "auroc_of_aspect_ratio_alone": auroc(y, aspect),
           "stratified_auroc_of_aspect_ratio": stratified_auroc(y, aspect, strata)}
    for k, v in scores.items():
        v = np.asarray(v)[known]
        out[k] = {"auroc": auroc(y, v), "aspect_stratified_auroc": stratified_auroc(y, v, strata)}
    return out


# ----------------------------------------------------------------------------- the stage


def stage_evaluation(name: str = "ae_seed42", score_params: dict | None = None,
                     out: Path = SCRATCH / "stage") -> dict:
    """Run the evaluation stage (:func:`pneumocxr.anomaly.evaluate.run_anomaly_evaluation`, default
    params unless ``score_params``) on the real arrays with the weights of ``name``.

    The weights are wrapped in a stage checkpoint (the same ``fit_autoencoder`` trained them;
    retraining through the training stage would repeat an hour of CPU for the same numbers).
    Writes metrics.json, scores.csv and the three figures under ``out``.
    """
    cfg, variant = _cfg(name)
    ck = torch.load(SCRATCH / "models" / f"{_key(name)}.pt", map_location="cpu",
                    weights_only=False)
    model = _model(cfg)
    tr = load_split(DATA, "train", variant)
    meta = {"kind": "autoencoder", "model": model.config(), "variant": variant,
            "train": {k: v for k, v in cfg.items() if k not in ("input_size", "channels",
                                                               "latent_dim", "variational")},
            "seed": cfg["seed"], "best_epoch": ck["best_epoch"],
            "val_mse": min(r["val_loss"] for r in ck["history"]),
            "n_train_normal": int((tr.y_binary == 0).sum()), "data_source": tr.data_source,
            "note": f"weights of bench/anomaly_experiments.py run {name}"}
    model_path = out / "models" / "autoencoder" / "best.pt"
    save_checkpoint(model_path, ck["best"], meta, kind="autoencoder")   # what the stage reads
    res = out / "results" / "anomaly"
    outputs = {"metrics": res / "metrics.json", "scores": res / "scores.csv",
               "reconstructions": res / "reconstructions.png",
               "histogram": res / "score_histogram.png", "roc": res / "roc.png"}
    params = {"score": score_params} if score_params else {}
    return ae_eval.run_anomaly_evaluation(model_path, DATA, outputs, params=params,
                                          seed=cfg["seed"], device="cpu")


# ----------------------------------------------------------------------------- report


STAGE_METRICS = SCRATCH / "stage" / "results" / "anomaly" / "metrics.json"
SUMMARY_SCORES = ("mse_mean", "mse_top1pct", "gradient_mean", "ssim_mean", "ssim_top2pct",
                  "feature_error_mean", "latent_mahalanobis", "latent_knn5", "feature_stats_L0",
                  "patch_L3_mean")


def select_score(runs: list[dict], run: str = "ae_seed42", min_gain: float = 0.1) -> dict:
    """The default score, chosen on validation only.

    Rule: among the scores whose validation AUROC rises by more than ``min_gain`` from the
    untrained network to the trained one (so they measure what the autoencoder learned of
    normal images, not a property of the input alone), the one with the highest validation
    AUROC averaged over the trained weights of ``run`` (the default setting: epochs 15, 20,
    25 and the best = last), so the choice does not hinge on one stopping epoch.
    """
    evs = [ev for r in runs if r["name"] == run for ev in r["evaluations"]]
    trained = [ev["scores"] for ev in evs if not ev["weights"].startswith("untrained")]
    untrained = [ev["scores"] for ev in evs if ev["weights"].startswith("untrained")]
    if not trained or not untrained:
        return {"note": f"{run}: trained and untrained evaluations needed"}
    table = {k: {"val_auroc_trained_mean": round(float(np.mean([t[k]["val_auroc"]
                                                                for t in trained])), 3),
                 "val_auroc_untrained": round(untrained[0][k]["val_auroc"], 3)}
             for k in untrained[0] if all(k in t for t in trained)}
    learned = {k: v for k, v in table.items()
               if v["val_auroc_trained_mean"] - v["val_auroc_untrained"] > min_gain}
    chosen = (max(learned, key=lambda k: learned[k]["val_auroc_trained_mean"])
              if learned else None)
    rule = " ".join(select_score.__doc__.split("Rule: ")[1].split())
    return {"rule": rule, "run": run, "n_trained_weights": len(trained), "min_gain": min_gain,
            "chosen": chosen,
            "best_val_overall": max(table, key=lambda k: table[k]["val_auroc_trained_mean"]),
            "table": table}


def _slim(ev: dict) -> dict:
    """One evaluation for the results file: every score's AUROCs and EER-threshold rates; the
    per-subtype and acquisition checks for the summary scores only."""
    keep = ("val_auroc", "test_auroc", "test_sensitivity", "test_specificity", "val_eer_gap")
    scores = {k: {m: v[m] for m in keep} | ({m: v[m] for m in v if m.startswith("test_flagged")}
                                              if k in SUMMARY_SCORES else {})
              for k, v in ev["scores"].items()}
    acq = {k: v for k, v in ev["acquisition_check"].items()
           if not isinstance(v, dict) or k in SUMMARY_SCORES}
    return {**ev, "scores": scores, "acquisition_check": acq}


def _dump(obj, indent: int = 0) -> str:
    """JSON with one line per flat dict or list (readable and ~4x smaller than indent=1)."""
    flat = not isinstance(obj, (dict, list)) or all(
        not isinstance(v, (dict, list)) or (isinstance(v, list) and len(v) <= 3 and all(
            not isinstance(x, (dict, list)) for x in v))
        for v in (obj.values() if isinstance(obj, dict) else obj))
    if flat:
        return json.dumps(obj)
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {_dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + _dump(v, indent + 1) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def _rounded(obj, digits: int = 4):
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v, digits) for v in obj]
    return obj


def collect() -> Path:
    """Gather the cached results into ``bench/results/anomaly_experiments.json``."""
    runs = []
    for name, (over, variant, what) in EXPERIMENTS.items():
        key = _key(name)
        model_file = SCRATCH / "models" / f"{key}.pt"
        if not model_file.is_file():
            continue
        ck = torch.load(model_file, map_location="cpu", weights_only=False)
        scored = sorted(SCRATCH.glob(f"scores/{name}_{key}_*.json"))
        runs.append({
            "name": name, "what": what, "config": BASE | over, "variant": variant,
            "best_epoch": ck["best_epoch"], "train_seconds": round(ck["seconds"]),
            "history": [[r["epoch"], round(r["train_loss"], 6), round(r["val_loss"], 6)]
                        for r in ck["history"]],
            "history_columns": ["epoch", "train_loss", "val_normal_mse"],
            "evaluations": sorted((_slim(json.loads(p.read_text())) for p in scored),
                                  key=lambda ev: (ev["weights"].startswith("best"),
                                                  ev["epoch"])),
        })
    info = json.loads((DATA / "info.json").read_text())
    summary = []
    for run in runs:
        for ev in run["evaluations"]:
            summary.append({"run": run["name"], "epoch": ev["epoch"], "weights": ev["weights"],
                            **{k: {m: round(v[m], 3) for m in ("val_auroc", "test_auroc",
                                                                "test_sensitivity",
                                                                "test_specificity")}
                               for k, v in ev["scores"].items() if k in SUMMARY_SCORES}})
    out = {
        "what": "anomaly score design: AUROC on val and test, and test sensitivity/specificity "
                "at the EER threshold chosen on val, per autoencoder and candidate score",
        "command": "bench/anomaly_experiments.py all",
        "data": {**info, "note": "shared Kermany dev copy; val = 10% of train patients "
                 "(grouped, stratified); test = the shared dev test split (patient-disjoint)"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "device": "cpu", "note": "runs trained with 1-2 torch threads on a shared "
                    "2-core CPU; train_seconds are wall times under that contention"},
        "selection": select_score(runs),
        "stage_evaluation": (json.loads(STAGE_METRICS.read_text()) if STAGE_METRICS.is_file()
                             else None),
        "summary": summary,
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(_dump(_rounded(out)) + "\n")
    return RESULTS


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cmd", choices=["data", "train", "score", "stage", "collect", "all"])
    parser.add_argument("--name", choices=sorted(EXPERIMENTS), default="ae_seed42")
    parser.add_argument("--epoch", type=int, help="score the snapshot of this epoch")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    build_arrays()
    if args.cmd == "train":
        print(train(args.name))
    elif args.cmd == "score":
        score(args.name, args.epoch)
    elif args.cmd == "stage":
        m = stage_evaluation(args.name)
        print(json.dumps({k: m["test"][k] for k in ("auroc", "sensitivity", "specificity")}))
    elif args.cmd == "collect":
        print(collect())
    elif args.cmd == "all":
        for name, (over, _, _) in EXPERIMENTS.items():
            train(name)
            epochs = (BASE | over)["epochs"]
            # a continued run shares its first epochs (and initialisation) with its source
            first = (BASE | EXPERIMENTS[CONTINUES[name]][0])["epochs"] if name in CONTINUES else 0
            for epoch in [None, *([] if first else [0]), *range(first + 5, epochs, 5)]:
                score(name, epoch)
        print(collect())


if __name__ == "__main__":
    main()
