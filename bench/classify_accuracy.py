"""Accuracy and wall time of the classification recipe on the real shared data (dev split).

Runs the library end to end, outside Snakemake/DVC: ``prepare`` (Kermany folder -> arrays at
``--resize``/``--crop``), then ``train`` binary, ``train`` 3-class from the binary checkpoint,
``calibrate`` each (temperature and operating threshold on its val predictions) and
``evaluate`` both on the held-out dev test split (patients never in train). Writes a JSON
summary (numbers with 95% patient-bootstrap CIs, seconds per step, command, commit, machine).

    python bench/classify_accuracy.py --crop 128 --resize 146 --epochs 15 --epochs-three-class 10 \
        --workdir /tmp/pneumocxr_acc --out bench/results/classify_accuracy_128px.json

The flags were spelled ``--epochs-3class``, ``--lr-3class``, ``--init-3class`` and ``--tasks
3class`` before the task was renamed ``three_class``; those spellings still work (the commands
recorded in ``bench/results`` use them).

Everything it writes besides ``--out`` goes to ``--workdir`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
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

import torch

from pneumocxr.calibration import run_calibration
from pneumocxr.config import complete
from pneumocxr.data.prepare import prepare
from pneumocxr.evaluate import run_evaluation
from pneumocxr.settings import TrainSettings
from pneumocxr.train import run_training
from pneumocxr.utils import set_threads

REPO = Path(__file__).resolve().parents[1]
#: ``--tasks`` spellings of before the rename (the commands in bench/results use them)
TASK_ALIASES = {"3class": "three_class"}
KERMANY = REPO.parent / "shared" / "data" / "kermany" / "chest_xray"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        return out + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _ci(d: dict) -> list[float]:
    return [round(d["value"], 4), round(d["ci_low"], 4), round(d["ci_high"], 4)]


def _headline(m: dict) -> dict:
    t = m["test"]
    out = {"accuracy": _ci(t["accuracy"]), "auroc": _ci(t["auroc"]),
           "sensitivity_at_0.5": _ci(t["at_half"]["sensitivity"]),
           "specificity_at_0.5": _ci(t["at_half"]["specificity"]),
           "operating_threshold": round(t["at_operating"]["threshold"], 4),
           "sensitivity_at_operating": _ci(t["at_operating"]["sensitivity"]),
           "specificity_at_operating": _ci(t["at_operating"]["specificity"]),
           "ece_before": round(t["calibration"]["ece_before"], 4),
           "ece_after": round(t["calibration"]["ece_after"], 4),
           "temperature": round(m["temperature"], 4), "best_epoch": m["best_epoch"],
           "val_auroc": round(m["val"]["auroc"]["value"], 4),
           "val_accuracy": round(m["val"]["accuracy"]["value"], 4)}
    if "folded" in t:
        out["folded_accuracy"] = round(t["folded"]["accuracy"], 4)
        out["folded_sensitivity"] = round(t["folded"]["sensitivity"], 4)
        out["folded_specificity"] = round(t["folded"]["specificity"], 4)
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(KERMANY), help="Kaggle-layout Kermany folder")
    ap.add_argument("--resize", type=int, default=146)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--epochs", type=int, default=15, help="binary epochs")
    # the old spellings (--epochs-3class, ...) stay as aliases: bench/results records them
    ap.add_argument("--epochs-three-class", "--epochs-3class", dest="epochs_three_class",
                    type=int, default=10, help="3-class fine-tune epochs")
    ap.add_argument("--lr-three-class", "--lr-3class", dest="lr_three_class", type=float,
                    default=1e-3)
    ap.add_argument("--init-three-class", "--init-3class", dest="init_three_class",
                    choices=["binary", "none"], default="binary",
                    help="the 3-class model starts from the binary checkpoint (the study's "
                         "way) or from scratch")
    ap.add_argument("--tasks", nargs="+", type=lambda t: TASK_ALIASES.get(t, t),
                    choices=["binary", "three_class"], default=["binary", "three_class"],
                    help="binary and/or three_class (3class is accepted for three_class)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", required=True, help="JSON summary to write")
    return ap


def main(argv: list[str] | None = None) -> dict:
    ap = parser()
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # binary first: three_class starts from it
    tasks = [t for t in ("binary", "three_class") if t in args.tasks]
    set_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pneumocxr_acc_"))
    os.environ.setdefault("PNEUMOCXR_RESUME_DIR", str(work / "resume"))
    processed = work / "processed"
    binary_ckpt = work / "models" / "binary" / args.arch / "best.pt"
    if (tasks == ["three_class"] and args.init_three_class == "binary"
            and not binary_ckpt.is_file()):
        ap.error(f"--tasks three_class --init-three-class binary fine-tunes {binary_ckpt}, which "
                 "does not exist: add the binary task, point --workdir at a run that has it, or "
                 "pass --init-three-class none")
    seconds: dict[str, float | None] = {}

    t0 = time.perf_counter()
    if (processed / "info.json").is_file():
        logging.info("reusing the prepared arrays in %s (their split seed, not --seed)", processed)
        seconds["prepare"] = None  # reused: no time spent, recorded as such
    else:
        data = complete("data", {"source": "kermany", "root": args.root,
                                 "split_seed": args.seed})
        prepare("kermany", args.root, processed, work / "reports",
                prepare_params={"resize": args.resize, "crop": args.crop, "variants": ["plain"]},
                split_seed=data["split_seed"], val_fraction=data["val_fraction"],
                min_side=data["min_side"], max_pixels=data["max_pixels"],
                threads=args.threads, progress=False)
        seconds["prepare"] = time.perf_counter() - t0

    train_params = {"archs": [args.arch], "precision": "auto", "epochs": args.epochs,
                    "three_class": {"epochs": args.epochs_three_class, "lr": args.lr_three_class}}
    calibrate_params = complete("calibrate", {})
    results = {}
    for task in tasks:
        out = work / "models" / task / args.arch
        res = work / "results" / task / args.arch
        init = (binary_ckpt if task == "three_class" and args.init_three_class == "binary"
                else "none")
        t0 = time.perf_counter()
        run_training(processed, {"model": out / "best.pt", "history": res / "history.csv",
                                 "val_predictions": res / "val_predictions.csv"},
                     task=task, arch=args.arch, train_params=train_params, seed=args.seed,
                     device="cpu", init=init, resume_root=work / "resume")
        seconds[f"train_{task}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_calibration(res / "val_predictions.csv", out / "calibration.json", calibrate_params)
        seconds[f"calibrate_{task}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        outputs = {"metrics": res / "metrics.json", "predictions": res / "predictions.csv",
                   "confusion": res / "confusion.png", "roc": res / "roc.png",
                   "reliability": res / "reliability.png", "curves": res / "curves.png"}
        if task == "three_class":
            outputs["folded"] = res / "confusion_folded.png"
        metrics = run_evaluation(out / "best.pt", processed, outputs, task=task,
                                 calibration=out / "calibration.json",
                                 history_path=res / "history.csv",
                                 params={"n_boot": args.n_boot}, seed=args.seed)
        seconds[f"evaluate_{task}"] = time.perf_counter() - t0
        results[task] = _headline(metrics)

    summary = {
        "what": "dev-test metrics (value, 95% CI low, high; patient bootstrap) of the recipe",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "commit": _commit(),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "capability": torch.backends.cpu.get_cpu_capability(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_average_at_end": os.getloadavg()},
        "data": {"root": args.root, "resize": args.resize, "crop": args.crop,
                 "info": json.loads((processed / "info.json").read_text())["counts"]},
        "params": {t: TrainSettings.for_task(train_params, t, args.arch).as_dict()
                   for t in ("binary", "three_class")} | {"calibrate": calibrate_params},
        "seconds": {k: None if v is None else round(v, 1) for k, v in seconds.items()},
        "seconds_total_train_evaluate": round(sum(v for k, v in seconds.items()
                                                  if k != "prepare"), 1),
        "results": results,
        "workdir": str(work),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["results"], indent=2))
    return summary


if __name__ == "__main__":
    main()
