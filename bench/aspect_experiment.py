"""Does the squash teach the acquisition? The same recipe trained on aspect-kept originals vs
on their squashed copies, both scored on the dev-test originals.

``kermany/originals`` holds 1,710 of the shared images made from untouched original JPEGs
(aspect kept, shorter side 256): 1,542 of the dev train split and 163 of the dev test. Each
image is prepared two ways, both with the pipeline's own ``prepare`` path at
``--resize``/``--crop``: **aspect-kept** (the original: shorter side resized, centre crop, no
padding, since a pad would encode the aspect) and **squashed** (the shared 224 x 224 copy of the
same file, resized and cropped the same way). The binary recipe (params.yaml's, ResNet-18
from scratch) is trained on each with the same patient-grouped val carve and seed, and each
model is scored on the 163 test images prepared its own way. If the squashed model leans on
geometry, it loses more when the geometry cue is gone: the rank correlation of its scores
with the original aspect ratio and area, within each class, says how much it reads them.

    python bench/aspect_experiment.py --epochs 10 --out bench/results/aspect_experiment.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from _common import SHARED, write
from pneumocxr.data.images import read_image
from pneumocxr.data.preprocess import PreprocessConfig, preprocess
from pneumocxr.data.splits import carve_validation
from pneumocxr.datasets import ArrayDataset
from pneumocxr.inference import predict_logits
from pneumocxr.logits import pneumonia_score, probabilities
from pneumocxr.metrics import bootstrap_cis
from pneumocxr.models import load_model
from pneumocxr.settings import TrainSettings
from pneumocxr.train import fit
from pneumocxr.utils import set_threads

KERMANY = SHARED / "kermany"


def load(rows: pd.DataFrame, column: str, cfg: PreprocessConfig) -> np.ndarray:
    return np.stack([preprocess(read_image(KERMANY.parent / p, min_side=32).pixels, cfg)
                     for p in rows[column]])


def stats(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    pred = s >= 0.5
    return {"auroc": float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan"),
            "accuracy": float((pred == y).mean()), "sensitivity": float(pred[y == 1].mean()),
            "specificity": float((~pred[y == 0]).mean())}


def paired(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    sa, sb = stats(y, a), stats(y, b)
    return {f"{k}_difference": sa[k] - sb[k] for k in sa}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resize", type=int, default=146)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default="bench/results/aspect_experiment.json")
    args = ap.parse_args()
    set_threads(args.threads)
    cfg = PreprocessConfig.from_params({"resize": args.resize, "crop": args.crop})
    m = pd.read_csv(KERMANY / "manifest.csv", dtype={"patient_key": str})
    m = m.dropna(subset=["path_original"])
    m = m[m["split"].isin(["train", "test"])].sort_values(["split", "path"]).reset_index(drop=True)
    m["y"] = (m["label"] == "PNEUMONIA").astype(int)
    train, test = m[m["split"] == "train"].reset_index(drop=True), \
        m[m["split"] == "test"].reset_index(drop=True)
    is_val = carve_validation((train["y"].astype(str) + train["subtype"]).to_numpy(),
                              train["patient_key"].to_numpy(), 0.1, args.seed)
    recipe = TrainSettings.for_task({"epochs": args.epochs}, "binary")
    result = {"n_train": int((~is_val).sum()), "n_val": int(is_val.sum()),
              "n_test": int(len(test)), "n_test_normal": int((test["y"] == 0).sum()),
              "preprocess": {"resize": args.resize, "crop": args.crop}, "epochs": args.epochs,
              "seed": args.seed, "arms": {}}
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm, column in (("aspect_kept", "path_original"), ("squashed", "path")):
            t0 = time.perf_counter()
            x_tr, x_te = load(train, column, cfg), load(test, column, cfg)
            tr = ArrayDataset(x_tr[~is_val], train["y"].to_numpy()[~is_val],
                              ("normal", "pneumonia"), train["patient_key"].to_numpy()[~is_val],
                              name=f"{arm} train")
            va = ArrayDataset(x_tr[is_val], train["y"].to_numpy()[is_val],
                              ("normal", "pneumonia"), train["patient_key"].to_numpy()[is_val],
                              name=f"{arm} val")
            model_path = Path(tmp) / arm / "best.pt"
            summary = fit(tr, va, arch="resnet18", task="binary", params=recipe,
                          model_path=model_path, history_path=Path(tmp) / arm / "h.csv",
                          seed=args.seed, device="cpu", resume=False,
                          resume_root=Path(tmp) / "resume")
            model, meta = load_model(model_path)
            logits = predict_logits(model, x_te, normalization=meta["normalization"],
                                    input_size=int(meta["input_size"]),
                                    precision=meta["precision"])
            s = pneumonia_score(probabilities(logits))
            scores[arm] = s
            y = test["y"].to_numpy()
            cis = bootstrap_cis(stats, [y, s], groups=test["patient_key"].to_numpy(),
                                n_boot=args.n_boot, seed=args.seed)
            aspect = (test["orig_width"] / test["orig_height"]).to_numpy()
            area = (test["orig_width"] * test["orig_height"]).to_numpy()
            within = {}
            for c, name in ((0, "normal"), (1, "pneumonia")):
                mk = y == c
                within[name] = {"aspect": float(spearmanr(s[mk], aspect[mk])[0]),
                                "area": float(spearmanr(s[mk], area[mk])[0])}
            result["arms"][arm] = {"test": cis, "best_epoch": summary["best_epoch"],
                                   "val": summary["val"],
                                   "spearman_with_original_size_within_class": within,
                                   "seconds": round(time.perf_counter() - t0, 1)}
            print(arm, json.dumps({k: round(v["value"], 4) for k, v in cis.items()}), within)
    y = test["y"].to_numpy()
    result["aspect_kept_minus_squashed"] = bootstrap_cis(
        paired, [y, scores["aspect_kept"], scores["squashed"]],
        groups=test["patient_key"].to_numpy(), n_boot=args.n_boot, seed=args.seed)
    write(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
