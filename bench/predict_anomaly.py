"""What the anomaly detector adds to ``pneumocxr predict``: time per image and peak memory.

The trained models of a pipeline run (``--models``, e.g. ``results`` after
``config/cpu.yaml``) predict on real dev-test files (``kermany/chest_xray/test``: in
distribution, never the shifted set), with all parts and with the anomaly part switched off,
so the difference is the detector's own cost (decode, CLAHE, autoencoder, score). Files are
decoded one at a time and the models run on batches (``--batch``), so memory should not grow
with the number of files: the peak resident memory (``ru_maxrss``) is read after a first run
over ``--files`` / 4 files and again after the run over all ``--files``.

    python bench/predict_anomaly.py --models results --out bench/results/predict_anomaly.json
"""

from __future__ import annotations

import argparse
import resource
import time

from _common import REPO, SHARED, write
from pneumocxr.predict import load_predictor, predict_files
from pneumocxr.utils import set_threads


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(pred, files, batch: int) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    rows = predict_files(pred, files, batch_size=batch)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    bad = [r.file for r in rows if r.error]
    if bad:
        raise SystemExit(f"predict failed on {len(bad)} files, e.g. {bad[0]}")
    return {"images": len(files), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "ms_per_image_wall": round(1000 * wall / len(files), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=str(REPO / "results"))
    ap.add_argument("--files", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench/results/predict_anomaly.json"))
    args = ap.parse_args()
    set_threads(args.threads)
    files = sorted((SHARED / "kermany/chest_xray/test").glob("*/*.jpeg"))[:args.files]
    if len(files) < args.files:
        raise SystemExit(f"need {args.files} files under {SHARED}/kermany/chest_xray/test")
    pred = load_predictor(args.models)
    if pred.anomaly is None:
        raise SystemExit(f"{args.models}: no anomaly detector (run train_autoencoder and "
                         "evaluate_anomaly)")
    anomaly = pred.anomaly
    timed(pred, files[:args.batch], args.batch)                 # warm-up
    rss = {"after_warm_up": round(peak_rss_mib(), 1)}
    quarter = timed(pred, files[:args.files // 4], args.batch)
    rss[f"after_{args.files // 4}_files"] = round(peak_rss_mib(), 1)
    full = timed(pred, files, args.batch)
    rss[f"after_{args.files}_files"] = round(peak_rss_mib(), 1)
    single = timed(pred, files[:16], 1)
    pred.anomaly = None
    without = timed(pred, files, args.batch)
    pred.anomaly = anomaly
    out = {"models": args.models, "score": anomaly.score_params,
           "autoencoder_input": anomaly.meta["model"]["input_size"],
           "threads": args.threads, "batch": args.batch,
           "all_parts": full, "all_parts_quarter": quarter, "all_parts_batch_1": single,
           "without_anomaly": without,
           "anomaly_ms_per_image": round(full["ms_per_image_wall"]
                                         - without["ms_per_image_wall"], 2),
           "peak_rss_mib": rss}
    write(args.out, out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
