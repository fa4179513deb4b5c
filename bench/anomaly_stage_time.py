"""Time of the ``evaluate_anomaly`` stage with the previous default score and with the
current one, on the same trained autoencoder and prepared data, in one process (so the two
are measured on the same machine at the same time). ``train_autoencoder`` does not depend on
the score; its time is the rule's benchmark file (``benchmarks/train_autoencoder.tsv``).

    python bench/anomaly_stage_time.py --out bench/results/anomaly_stage_time.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import REPO, write
from anomaly_shift import SCORES
from pneumocxr.anomaly.evaluate import run_anomaly_evaluation
from pneumocxr.config import load_params
from pneumocxr.utils import set_threads

PREVIOUS = SCORES["ssim_top2"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "results/models/autoencoder/best.pt"))
    ap.add_argument("--processed", default=str(REPO / "data/processed"))
    ap.add_argument("--overlay", default=str(REPO / "config/cpu.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench/results/anomaly_stage_time.json"))
    args = ap.parse_args()
    set_threads(args.threads)
    current = load_params(REPO / "params.yaml", [args.overlay])["anomaly"]
    previous = {**current, "score": PREVIOUS,
                "evaluate": {**current["evaluate"], "baseline": None}}
    out = {}
    for name, params in (("previous_default", previous), ("current_default", current)):
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            t0 = time.perf_counter()
            m = run_anomaly_evaluation(
                args.model, args.processed,
                {"metrics": t / "m.json", "scores": t / "s.csv", "reconstructions": t / "r.png",
                 "histogram": t / "h.png", "roc": t / "roc.png", "score_state": t / "st.pt"},
                params=params, seed=42, device="cpu")
            out[name] = {"score": params["score"], "baseline": params["evaluate"]["baseline"],
                         "seconds": round(time.perf_counter() - t0, 1),
                         "dev_test_auroc": m["test"]["auroc"]["value"]}
        print(name, out[name]["seconds"], "s", flush=True)
    write(args.out, {"stage": "evaluate_anomaly", **out})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
