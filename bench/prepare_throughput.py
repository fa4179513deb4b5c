"""Throughput of the prepare step on the real shared Kermany images.

Runs :func:`pneumocxr.data.prepare.prepare` end to end (decode, CLAHE + plain variants,
validation carving, arrays, metadata, reports) into a temporary folder for each output size
and thread count, and reads the phase timings prepare logs (decode + preprocess, split
assignment), so the image throughput is reported apart from the fixed per-run costs::

    .venv/bin/python bench/prepare_throughput.py                       # defaults below
    .venv/bin/python bench/prepare_throughput.py --threads 1 2 4 --sizes 256/224

Writes ``bench/results/prepare.json`` (figures, the command, ``git rev-parse HEAD``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pneumocxr.config import complete
from pneumocxr.data.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "kermany" / "chest_xray"


def _git_rev() -> tuple[str, bool]:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    return rev, dirty


class _PhaseTimes(logging.Handler):
    """Collects the phase timings prepare() logs (decode+preprocess, split assignment)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("decoded and preprocessed"):
            self.times["decode_preprocess_s"] = float(record.args[1])
        elif record.msg.startswith("splits assigned"):
            self.times["assign_splits_s"] = float(record.args[0])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help="Kaggle-layout folder (default: the shared real data)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", nargs="+", default=["256/224", "146/128"],
                        help="resize/crop pairs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prepare.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    phases = _PhaseTimes()
    prep_log = logging.getLogger("pneumocxr.data.prepare")
    prep_log.setLevel(logging.INFO)
    prep_log.addHandler(phases)
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: data folder not found (pass --root)")

    # params data at the schema's defaults (split seed 42, val fraction 0.1, image size limits)
    data = complete("data", {"source": "kermany", "root": str(args.root)})
    runs = []
    for size in args.sizes:
        resize, crop = (int(v) for v in size.split("/"))
        for threads in args.threads:
            load_before = os.getloadavg()[0]
            with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
                start = time.perf_counter()
                summary = prepare("kermany", args.root, Path(tmp) / "processed",
                                  Path(tmp) / "reports",
                                  prepare_params={"resize": resize, "crop": crop,
                                                  "variants": ["plain", "clahe"]},
                                  split_seed=data["split_seed"],
                                  val_fraction=data["val_fraction"],
                                  min_side=data["min_side"], max_pixels=data["max_pixels"],
                                  threads=threads, progress=False)
                seconds = time.perf_counter() - start
            n = summary["n_images"]
            decode = phases.times["decode_preprocess_s"]
            runs.append({"resize": resize, "crop": crop, "threads": threads, "n_images": n,
                         "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
                         "decode_preprocess_s": round(decode, 2),
                         "decode_preprocess_images_per_s": round(n / decode, 1),
                         "assign_splits_s": round(phases.times["assign_splits_s"], 2),
                         "load_avg_1min_before": round(load_before, 2)})
            print(f"resize {resize} crop {crop} threads {threads}: {n} images in "
                  f"{seconds:.1f} s = {n / seconds:.0f} images/s end to end; decode+preprocess "
                  f"{n / decode:.0f} images/s; splits {phases.times['assign_splits_s']:.1f} s "
                  f"(load {load_before:.1f})", flush=True)

    rev, dirty = _git_rev()
    result = {
        "benchmark": "prepare_throughput",
        "what": "prepare() end to end on the real shared Kermany images (224x224 JPEG q75, "
                "3 identical channels): decode, plain + CLAHE variants, val carving, write "
                "arrays/metadata/reports",
        "command": " ".join(["python", "bench/prepare_throughput.py",
                             *map(shlex.quote, (argv if argv is not None else sys.argv[1:]))]),
        "git_rev": rev,
        "git_dirty": dirty,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": str(args.root),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "note": "CPU shared with other jobs; "
                    "see load_avg_1min_before per run"},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
