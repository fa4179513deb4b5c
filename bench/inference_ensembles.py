"""Inference-time combinations of the trained classifiers: horizontal-flip test-time
augmentation and the binary model averaged with the three-class model folded to normal vs
pneumonia. Chosen on val and the synthetic-shift proxy, never on the shifted held-out set.

The models of a pipeline run (``--results``) score the val split, the proxy
(``bench/operating_point.py``'s: each val crop redrawn ``--copies`` times under another
acquisition) and the dev test (in distribution). Each model's probabilities are temperature-
scaled with its own ``calibration.json`` (what evaluate and predict do); a combination
averages p(pneumonia) = 1 - p(normal) over its members. Accuracy, sensitivity and
specificity are at 0.5 (the shipped rule ``half``). The criterion, fixed with the variants: the
highest mean of val and proxy AUROC; a variant is adopted only when it beats ``binary`` by more
than the spread of three training seeds of the recipe (0.002 AUROC, ``recipe_ablation``).

    python bench/inference_ensembles.py --results results --processed data/processed \
        --out bench/results/inference_ensembles.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from _common import REPO, write
from operating_point import proxy_images
from pneumocxr.calibration import load_calibration
from pneumocxr.data.arrays import load_split
from pneumocxr.inference import predict_logits
from pneumocxr.logits import pneumonia_score, probabilities
from pneumocxr.models import load_model
from pneumocxr.utils import set_threads

VARIANTS = {"binary": [("binary", False)],
            "binary+hflip": [("binary", False), ("binary", True)],
            "binary+three_class": [("binary", False), ("three_class", False)],
            "binary+three_class+hflip": [("binary", False), ("binary", True),
                                         ("three_class", False), ("three_class", True)],
            "three_class": [("three_class", False)]}


def rates(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    pred = p >= 0.5
    return {"auroc": float(roc_auc_score(y, p)), "accuracy": float((pred == y).mean()),
            "sensitivity": float(pred[y == 1].mean()),
            "specificity": float((~pred[y == 0]).mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(REPO / "results"))
    ap.add_argument("--processed", default=str(REPO / "data" / "processed"))
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench/results/inference_ensembles.json"))
    args = ap.parse_args()
    set_threads(args.threads)
    val, test = (load_split(args.processed, s, "plain") for s in ("val", "test"))
    sets = {"val": (np.asarray(val.images), val.y_binary),
            "proxy": (proxy_images(val.images, args.copies, args.seed),
                      np.tile(val.y_binary, args.copies)),
            "dev_test": (np.asarray(test.images), test.y_binary)}
    p = {}
    for task in ("binary", "three_class"):
        d = Path(args.results) / "models" / task / "resnet18"
        model, meta = load_model(d / "best.pt")
        temp = float(load_calibration(d / "calibration.json")["temperature"])
        for flip in (False, True):
            for name, (x, _) in sets.items():
                x = x[:, :, ::-1] if flip else x
                logits = predict_logits(model, np.ascontiguousarray(x),
                                        normalization=meta["normalization"], batch_size=128,
                                        input_size=int(meta["input_size"]),
                                        precision=meta.get("precision", "fp32"))
                p[(task, flip, name)] = pneumonia_score(probabilities(logits, temp))
    rows = []
    for vname, members in VARIANTS.items():
        row = {"variant": vname}
        for name, (_, y) in sets.items():
            row[name] = rates(y, np.mean([p[(t, f, name)] for t, f in members], axis=0))
        row["criterion"] = (row["val"]["auroc"] + row["proxy"]["auroc"]) / 2
        rows.append(row)
        print(vname, json.dumps({k: {m: round(v, 4) for m, v in row[k].items()}
                                 for k in sets}), round(row["criterion"], 4), flush=True)
    base = next(r for r in rows if r["variant"] == "binary")
    best = max(rows, key=lambda r: r["criterion"])
    adopted = best["variant"] if best["criterion"] - base["criterion"] > 0.002 else "binary"
    write(args.out, {"proxy": {"copies": args.copies, "seed": args.seed,
                               "definition": "bench/operating_point.py PROXY"},
                     "criterion": "highest mean of val and proxy AUROC; adopted only when "
                                  "more than 0.002 above binary (the 3-seed spread)",
                     "rows": rows, "best": best["variant"], "adopted": adopted})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
