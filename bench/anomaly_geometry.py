"""Does the anomaly score read the image or its geometry? Scores of the trained detector
against the original image size, and on aspect-kept originals.

The shared 224 x 224 copies are squashed from originals of many sizes, and the size differs
between normal and pneumonia images (the acquisition shortcut of ``results/shortcut``). A score
that reads geometry correlates with the original aspect ratio and area *within* a class, and
changes when the same images arrive aspect-kept. For each score (the configured default, the
previous default and the study's image-mean squared error), all on the pipeline's trained
autoencoder (``--model``) and fitted on the normal training images of ``--processed``:

* Spearman correlation, within each class of the dev test (in-distribution), of the score
  with the original aspect ratio (width / height) and area (``kermany/manifest.csv``, which
  gives them for the images that have an original);
* AUROC on the 163 dev-test images that ``kermany/originals`` holds, prepared aspect-kept
  (shorter side resized, centre crop, CLAHE, as ``prepare``) and squashed (the shared copies
  of the same files), with the paired difference (patient bootstrap), and the sensitivity and
  specificity at each score's val EER threshold.

    python bench/anomaly_geometry.py --external data/external/shifted \
        --out bench/results/anomaly_geometry.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from _common import REPO, SHARED, commit, machine, write
from anomaly_shift import SCORES
from pneumocxr.anomaly.detect import choose_threshold
from pneumocxr.anomaly.scores import compute_scores, create_score, fit_score
from pneumocxr.config import load_params
from pneumocxr.data.arrays import load_split
from pneumocxr.data.images import read_image
from pneumocxr.data.preprocess import PreprocessConfig, preprocess
from pneumocxr.metrics import auroc, bootstrap_ci
from pneumocxr.models import autoencoder_input, load_autoencoder
from pneumocxr.utils import set_determinism, set_threads

KERMANY = SHARED / "kermany"
PREVIOUS, STUDY = SCORES["ssim_top2"], SCORES["mse_mean"]


def rates(y: np.ndarray, s: np.ndarray, t: float) -> dict[str, float]:
    pred = s >= t
    return {"sensitivity": float(pred[y == 1].mean()), "specificity": float((~pred[y == 0]).mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "results/models/autoencoder/best.pt"))
    ap.add_argument("--processed", default=str(REPO / "data" / "processed"))
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--external", default=None,
                    help="also score this prepared external set (e.g. data/external/shifted: "
                         "a look at it, logged in bench/results/external_looks.jsonl) and give "
                         "the paired AUROC differences of the default to the other scores")
    ap.add_argument("--out", default=str(REPO / "bench/results/anomaly_geometry.json"))
    args = ap.parse_args()
    set_threads(args.threads)
    model, meta = load_autoencoder(args.model)
    size, variant = int(meta["model"]["input_size"]), meta["variant"]
    info = json.loads((Path(args.processed) / "info.json").read_text())
    cfg = PreprocessConfig.from_params({"resize": info["resize"], "crop": info["crop"],
                                        "clahe": info["clahe"]})
    splits = {s: load_split(args.processed, s, variant) for s in ("train", "val", "test")}
    manifest = pd.read_csv(KERMANY / "manifest.csv", dtype={"patient_key": str})
    dims = manifest.drop_duplicates("sha256").set_index("sha256")[["orig_width", "orig_height"]]
    test = splits["test"]
    geo = dims.reindex(test.meta["sha256"]).to_numpy(dtype=float)
    aspect, area = geo[:, 0] / geo[:, 1], geo[:, 0] * geo[:, 1]
    known = np.isfinite(aspect)      # the manifest gives the original size where it has one
    y_test = test.y_binary
    originals = manifest[(manifest["split"] == "test") & manifest["path_original"].notna()]
    originals = originals.sort_values("path").reset_index(drop=True)
    y_o = (originals["label"] == "PNEUMONIA").astype(int).to_numpy()
    groups_o = originals["patient_key"].to_numpy()
    clahe = variant == "clahe"
    arms = {name: autoencoder_input(np.stack([
        preprocess(read_image(KERMANY.parent / p, min_side=32).pixels, cfg, clahe=clahe)
        for p in originals[column]]), size)
        for name, column in (("aspect_kept", "path_original"), ("squashed", "path"))}
    normals = autoencoder_input(np.asarray(splits["train"].images[splits["train"].y_binary == 0]),
                                size)
    xv, xt = autoencoder_input(splits["val"].images, size), autoencoder_input(test.images, size)
    ext = load_split(args.external, "test", variant) if args.external else None
    xe = autoencoder_input(ext.images, size) if ext is not None else None
    ext_scores = {}
    default = load_params(args.params)["anomaly"]["score"]
    out = {"model": args.model, "input_size": size, "variant": variant,
           "n_dev_test": int(len(y_test)), "n_originals": int(len(y_o)),
           "n_originals_normal": int((y_o == 0).sum()), "scores": {}}
    for name, sp in (("default", default), ("previous_default", PREVIOUS), ("study_mse", STUDY)):
        set_determinism(args.seed)
        scorer = fit_score(create_score(**sp), model, normals, 64)
        sv, st = compute_scores(scorer, model, xv, 64), compute_scores(scorer, model, xt, 64)
        thr = choose_threshold(splits["val"].y_binary, sv)["value"]
        within = {}
        for c, cname in ((0, "normal"), (1, "pneumonia")):
            m = (y_test == c) & known
            within[cname] = {"n": int(m.sum()),
                             "aspect": float(spearmanr(st[m], aspect[m])[0]),
                             "area": float(spearmanr(st[m], area[m])[0])}
        so = {arm: compute_scores(scorer, model, x, 64) for arm, x in arms.items()}
        row = {"params": sp, "label": scorer.label, "dev_test_auroc": auroc(y_test, st),
               "spearman_with_original_size_within_class": within, "originals": {}}
        for arm, s in so.items():
            row["originals"][arm] = {"auroc": bootstrap_ci(auroc, [y_o, s], groups_o,
                                                          args.n_boot, args.seed),
                                     **rates(y_o, s, thr)}
        row["originals"]["aspect_kept_minus_squashed_auroc"] = bootstrap_ci(
            lambda y, a, b: auroc(y, a) - auroc(y, b), [y_o, so["aspect_kept"], so["squashed"]],
            groups_o, args.n_boot, args.seed)
        if ext is not None:
            se = compute_scores(scorer, model, xe, 64)
            ext_scores[name] = se
            row["external"] = {"auroc": bootstrap_ci(auroc, [ext.y_binary, se], ext.patients,
                                                     args.n_boot, args.seed),
                               **rates(ext.y_binary, se, thr)}
        out["scores"][name] = row
        print(name, json.dumps({"dev_test_auroc": round(row["dev_test_auroc"], 4),
                                "within": within,
                                "originals": {a: round(v["auroc"]["value"], 4)
                                              for a, v in row["originals"].items()
                                              if a != "aspect_kept_minus_squashed_auroc"}}),
              flush=True)
    if ext is not None:
        out["external"] = {"set": args.external, "n": int(len(ext.y_binary)),
                           "default_minus": {n: bootstrap_ci(
                               lambda y, a, b: auroc(y, a) - auroc(y, b),
                               [ext.y_binary, ext_scores["default"], ext_scores[n]],
                               ext.patients, args.n_boot, args.seed)
                               for n in ext_scores if n != "default"}}
        print("external", json.dumps(out["external"]))
        look = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit(),
                "set": Path(args.external).name, "n_images": out["external"]["n"],
                "purpose": "paired AUROC differences of the default anomaly score to the "
                           "previous default and the study's MSE (bench/anomaly_geometry.py)",
                "chosen_on": "none (report only)", "machine": machine()["cpu"],
                "figures": {n: {"auroc": round(r["external"]["auroc"]["value"], 4),
                                "specificity": round(r["external"]["specificity"], 4)}
                            for n, r in out["scores"].items()}
                | {"default_minus": {n: round(v["value"], 4)
                                     for n, v in out["external"]["default_minus"].items()}}}
        with (REPO / "bench/results/external_looks.jsonl").open("a") as fh:
            fh.write(json.dumps(look) + "\n")
    write(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
