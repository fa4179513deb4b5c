"""Time of occlusion sensitivity for one image: ResNet-18, window 16, stride 8.

Runs :class:`pneumocxr.explain.Occlusion` on one random image per configuration (the weights
do not change the cost; they are seeded anyway) and reports, per image, the wall time, the
process CPU time (on a machine shared with other jobs the wall time says more about the
neighbours than about the code; CPU time is what an idle core would need) and the time per
forward pass. One 224 px image with window 16 / stride 8 is 27 x 27 = 729 forward passes::

    .venv/bin/python bench/occlusion_speed.py                      # defaults below
    .venv/bin/python bench/occlusion_speed.py --threads 1 2 --sizes 224 128 --batch-sizes 64

Writes ``bench/results/occlusion.json`` (figures, the command, ``git rev-parse HEAD``).
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
import time
from pathlib import Path

import torch

from pneumocxr.explain.occlusion import Occlusion, window_starts
from pneumocxr.explain.targets import ImageModel
from pneumocxr.models import create_model, default_normalization

REPO = Path(__file__).resolve().parents[1]


def _git_rev() -> tuple[str, bool]:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    return rev, dirty


def time_one(arch: str, size: int, window: int, stride: int, batch_size: int, threads: int,
             channels_last: bool, seed: int = 0) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = create_model(arch, 2).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = ImageModel(net, default_normalization(1)).eval()
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
    passes = len(window_starts(size, window, stride)) ** 2
    with torch.inference_mode():   # warm-up: first-call allocations and kernel selection
        model(x.expand(min(batch_size, passes), -1, -1, -1).contiguous())
    load = os.getloadavg()[0]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    Occlusion(model).attribute(x, window=window, stride=stride, baseline=0.5,
                               batch_size=batch_size, channels_last=channels_last)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"arch": arch, "size": size, "window": window, "stride": stride,
            "batch_size": batch_size, "threads": threads, "channels_last": channels_last,
            "forward_passes": passes, "wall_s_per_image": round(wall, 2),
            "cpu_s_per_image": round(cpu, 2),
            "cpu_ms_per_forward": round(1000 * cpu / passes, 1),
            "load_avg_1min_before": round(load, 2),
            "load_avg_1min_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224])
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--channels-last", choices=["off", "on", "both"], default="both")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "occlusion.json")
    parser.add_argument("--append", action="store_true",
                        help="add this invocation to the runs already in --out")
    args = parser.parse_args(argv)
    formats = {"off": [False], "on": [True], "both": [False, True]}[args.channels_last]
    runs = []
    for size in args.sizes:
        for threads in args.threads:
            for bs in args.batch_sizes:
                for cl in formats:
                    r = time_one(args.arch, size, args.window, args.stride, bs, threads, cl)
                    print(json.dumps(r), flush=True)
                    runs.append(r)
    rev, dirty = _git_rev()
    invocation = {
        "command": ".venv/bin/python " + " ".join(shlex.quote(a) for a in [
            "bench/occlusion_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "git_rev": rev, "git_dirty": dirty,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "runs": runs,
    }
    result = {
        "benchmark": "occlusion_speed",
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or
                    platform.machine(), "torch": torch.__version__},
        "invocations": [],
    }
    if args.append and args.out.is_file():
        result = json.loads(args.out.read_text())
    result["invocations"].append(invocation)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
