"""Speed of ``pneumocxr predict`` on CPU: binary ResNet-18, 224 px, PyTorch vs ONNX Runtime.

A binary checkpoint with seeded random weights (the weights do not change the cost) and the
real pipeline's preprocessing (resize 256, crop 224) is written to a temporary results folder.
For each thread count it measures:

- ``end_to_end``: :func:`pneumocxr.predict.predict_files` over real files (decode, preprocess,
  model, temperature, threshold), batched (``--batch``) and one image at a time (batch 1);
- ``forward``: the classifier alone on a normalised batch (batch ``--batch`` and 1), PyTorch
  eager vs the ONNX Runtime session of :mod:`pneumocxr.export`;

with the wall time, the process CPU time (the machine is shared: wall time also measures the
neighbours; see ``load_average``) and the best of ``--repeats`` runs. It also checks that
ONNX Runtime's probabilities match PyTorch's (max abs difference). Images: the first files of
``../shared/data/kermany/chest_xray/test`` (real, 224 px JPEG), or synthetic PNGs without it::

    OMP_NUM_THREADS=1 .venv/bin/python bench/predict_speed.py            # threads 1 and 2

Writes ``bench/results/predict_speed.json`` (figures, command, ``git rev-parse HEAD``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pneumocxr import CLASS_NAMES_BINARY
from pneumocxr.checkpoint import save_checkpoint
from pneumocxr.models import create_model, default_normalization
from pneumocxr.predict import load_predictor, predict_files, torch_forward
from pneumocxr.utils import write_json

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "kermany" / "chest_xray" / "test"


def _git_rev() -> dict:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    return {"commit": rev, "worktree_dirty": dirty}


def _write_model(root: Path, size: int) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet18", 2)
    meta = {"arch": "resnet18", "task": "binary", "class_names": list(CLASS_NAMES_BINARY),
            "in_chans": 1, "input_size": size, "normalization": default_normalization(1),
            "data_source": "benchmark",
            "preprocess": {"resize": 256, "crop": size, "variant": "plain",
                           "clahe": {"clip_limit": 2.0, "tile_grid": 8}}}
    path = root / "models/binary/resnet18/best.pt"
    save_checkpoint(path, model.state_dict(), meta, kind="classifier")
    # predict reads the operating point from the calibrate stage's file beside best.pt
    write_json({"format": 1, "temperature": 1.0,
                "operating_threshold": {"value": 0.5, "rule": "youden"}},
               path.parent / "calibration.json")
    return path


def _images(n: int, tmp: Path) -> tuple[list[Path], str]:
    if SHARED.is_dir():
        files = sorted(SHARED.glob("*/*.jpeg"))[:n]
        if len(files) == n:
            return files, f"real: first {n} files of {SHARED}"
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        p = tmp / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (256, 300), dtype=np.uint8)).save(p)
        files.append(p)
    return files, f"synthetic: {n} random 300x256 PNGs"


def _timed(fn, repeats: int) -> dict:
    fn()  # warm-up
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return {"wall_s": best_wall, "cpu_s": best_cpu}


def _rate(n: int, t: dict) -> dict:
    return {"images": n, **{k: round(v, 4) for k, v in t.items()},
            "images_per_s_wall": round(n / t["wall_s"], 2),
            "images_per_s_cpu": round(n / t["cpu_s"], 2)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--singles", type=int, default=8, help="images timed one at a time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", default=str(REPO / "bench/results/predict_speed.json"))
    args = ap.parse_args(argv)
    if max(args.threads) > 2:
        ap.error("this machine is shared: at most 2 threads")

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = _write_model(tmp / "results", args.size)
        files, image_source = _images(args.batch, tmp)
        try:
            from pneumocxr.export import export_onnx

            export = export_onnx(ckpt)
            backends = ["torch", "onnx"]
        except ValueError as err:   # onnx / onnxruntime not installed
            export, backends = {"error": str(err)}, ["torch"]
        runs = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            for backend in backends:
                pred = load_predictor(tmp / "results", backend=backend)
                e2e_batch = _timed(lambda: predict_files(pred, files, batch_size=args.batch),
                                   args.repeats)
                singles = files[:args.singles]
                e2e_single = _timed(lambda: predict_files(pred, singles, batch_size=1),
                                    args.repeats)
                forward = pred.binary_forward or \
                    (lambda x: torch_forward(pred.binary.model, x))
                xb = torch.randn(args.batch, 1, args.size, args.size)
                x1 = xb[:1]
                fwd_batch = _timed(lambda: forward(xb), args.repeats)
                fwd_single = _timed(lambda: [forward(x1) for _ in range(args.singles)],
                                    args.repeats)
                runs.append({
                    "threads": threads, "backend": backend,
                    "end_to_end_batch": _rate(len(files), e2e_batch),
                    "end_to_end_single": _rate(len(singles), e2e_single),
                    "forward_batch": _rate(args.batch, fwd_batch),
                    "forward_single": _rate(args.singles, fwd_single),
                })
                print(json.dumps(runs[-1]), flush=True)
        # agreement of the answers on the real files
        torch.set_num_threads(1)
        agreement = None
        if "onnx" in backends:
            a = predict_files(load_predictor(tmp / "results"), files)
            b = predict_files(load_predictor(tmp / "results", backend="onnx"), files)
            agreement = {"n_images": len(a), "max_abs_diff_p_pneumonia": max(
                abs(x.p_pneumonia - y.p_pneumonia) for x, y in zip(a, b)),
                "same_labels": all(x.label == y.label for x, y in zip(a, b))}

    def speedup(key: str, threads: int) -> float | None:
        r = {x["backend"]: x for x in runs if x["threads"] == threads}
        if "onnx" not in r:
            return None
        return round(r["onnx"][key]["images_per_s_cpu"] / r["torch"][key]["images_per_s_cpu"],
                     2)

    result = {
        "what": "pneumocxr predict speed on CPU: binary resnet18, random weights, "
                f"{args.size} px input (resize 256, crop {args.size}); best of "
                f"{args.repeats} runs after a warm-up",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        **_git_rev(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_at_start": load_start,
                    "load_average_at_end": os.getloadavg(),
                    "note": "machine shared with other jobs: wall times include waiting for "
                            "the CPU; images_per_s_cpu (process CPU time) is the fairer figure"},
        "images": image_source,
        "export": export,
        "onnx_vs_torch_agreement": agreement,
        "runs": runs,
        "onnx_speedup_cpu_time": {f"{k}_threads{t}": speedup(k, t) for t in args.threads
                                  for k in ("end_to_end_batch", "end_to_end_single",
                                            "forward_batch", "forward_single")},
    }
    try:
        import onnxruntime
        result["machine"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["onnx_speedup_cpu_time"], indent=2))
    return result


if __name__ == "__main__":
    main()
