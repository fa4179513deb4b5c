"""How many labelled images a site needs to recover its operating point (``pneumocxr
calibrate`` as a site would use it).

From an external set's predictions (``results/external/<set>/predictions.csv``: the binary
model's p(pneumonia) per image), each draw takes ``k`` images as the site's labelled sample
(whole patients, in a seeded random order, until k images), refits the threshold on them by
the same rule ``pneumocxr calibrate`` uses (:func:`pneumocxr.site.fit_site`), and scores the
rest of the set at the site's threshold and at the pipeline's; repeated ``--draws`` times for
each k. This is the one place the shifted set's labels are fitted: always on a held-apart
part of it, and never for the pipeline's shipped default.

    python bench/site_calibration.py --set shifted --k 10 25 50 100 --draws 200 \
        --out bench/results/site_calibration.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from _common import REPO, write
from pneumocxr.calibration import load_calibration
from pneumocxr.site import _sigmoid, fit_site, logit_difference


def _rates(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    return float(pred[y == 1].mean()), float((~pred[y == 0]).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(REPO / "results"))
    ap.add_argument("--set", default="shifted")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--k", type=int, nargs="+", default=[10, 25, 50, 100])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--rule", default="youden")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "site_calibration.json"))
    args = ap.parse_args()
    res = Path(args.results)
    df = pd.read_csv(res / "external" / args.set / "predictions.csv", dtype={"patient": str})
    cal = load_calibration(res / "models" / "binary" / args.arch / "calibration.json")
    p = df[f"p_pneumonia_binary_{args.arch}"].to_numpy()
    y = (df["label"] == "PNEUMONIA").to_numpy().astype(int)
    d = logit_difference(p, float(cal["temperature"]))
    pipe_t = float(cal["operating_threshold"]["value"])
    patients = df["patient"].to_numpy()
    uniq = np.unique(patients)
    rng = np.random.default_rng(args.seed)
    rows = []
    for k in args.k:
        out = {"k": k, "site": [], "pipeline": [], "n_normal_in_sample": [], "skipped": 0}
        for _ in range(args.draws):
            take = np.zeros(len(y), bool)
            for pat in rng.permutation(uniq):
                if take.sum() >= k:
                    break
                take |= patients == pat
            ys, ds = y[take], d[take]
            if len(np.unique(ys)) < 2:
                out["skipped"] += 1
                continue
            fit = fit_site(ds, ys, rule=args.rule, target_sensitivity=0.95)
            rest = ~take
            p_site = _sigmoid(d[rest] / fit["temperature"])
            out["site"].append(_rates(y[rest], p_site >= fit["operating_threshold"]["value"]))
            out["pipeline"].append(_rates(y[rest], p[rest] >= pipe_t))
            out["n_normal_in_sample"].append(int((ys == 0).sum()))
        summary = {"k": k, "draws": len(out["site"]), "skipped_one_class": out["skipped"],
                   "normals_in_sample_median": float(np.median(out["n_normal_in_sample"]))}
        for who in ("site", "pipeline"):
            a = np.array(out[who])
            for j, m in enumerate(("sensitivity", "specificity")):
                summary[f"{who}_{m}"] = {"mean": float(a[:, j].mean()),
                                         "p05": float(np.quantile(a[:, j], 0.05)),
                                         "p95": float(np.quantile(a[:, j], 0.95))}
        rows.append(summary)
        print(json.dumps(summary))
    write(args.out, {"set": args.set, "n_images": int(len(y)), "n_normal": int((y == 0).sum()),
                     "rule": args.rule, "pipeline_threshold": pipe_t,
                     "pipeline_rule": cal["operating_threshold"]["rule"], "rows": rows,
                     "note": "site threshold fitted on k images (whole patients), scored on the "
                             "rest of the set; the pipeline's threshold scored on the same rest"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
