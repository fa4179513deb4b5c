"""Paired bootstrap of two operating points of one model on the same images.

For an external set's predictions (``results/external/<set>/predictions.csv``), the
sensitivity, specificity and accuracy at each of two thresholds on the same p(pneumonia),
and their difference, with 95% CIs that resample patients (the same replicates for both, so
the difference's CI is paired). Used to report a change of operating-point rule against the
previous one; nothing is chosen here.

    python bench/paired_thresholds.py --set shifted --model binary_resnet18 \
        --a 0.1217 --a-label "val Youden" --b 0.5 --b-label "0.5" --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from _common import REPO, write
from pneumocxr.metrics import bootstrap_cis


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(REPO / "results"))
    ap.add_argument("--set", default="shifted")
    ap.add_argument("--model", default="binary_resnet18")
    ap.add_argument("--a", type=float, required=True)
    ap.add_argument("--b", type=float, required=True)
    ap.add_argument("--a-label", default="a")
    ap.add_argument("--b-label", default="b")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    df = pd.read_csv(Path(args.results) / "external" / args.set / "predictions.csv",
                     dtype={"patient": str})
    y = (df["label"] == "PNEUMONIA").to_numpy().astype(int)
    p = df[f"p_pneumonia_{args.model}"].to_numpy()

    def stats(yy: np.ndarray, pp: np.ndarray) -> dict[str, float]:
        out = {}
        for name, t in (("a", args.a), ("b", args.b)):
            pred = pp >= t
            out[f"{name}/sensitivity"] = float(pred[yy == 1].mean())
            out[f"{name}/specificity"] = float((~pred[yy == 0]).mean())
            out[f"{name}/accuracy"] = float((pred == yy).mean())
        for m in ("sensitivity", "specificity", "accuracy"):
            out[f"b_minus_a/{m}"] = out[f"b/{m}"] - out[f"a/{m}"]
        return out

    cis = bootstrap_cis(stats, [y, p], groups=df["patient"].to_numpy(), n_boot=args.n_boot,
                        seed=args.seed)
    result = {"set": args.set, "model": args.model, "n_images": int(len(y)),
              "n_normal": int((y == 0).sum()),
              "a": {"label": args.a_label, "threshold": args.a},
              "b": {"label": args.b_label, "threshold": args.b}, "metrics": cis}
    write(args.out, result)
    print(json.dumps({k: round(v["value"], 4) for k, v in cis.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
