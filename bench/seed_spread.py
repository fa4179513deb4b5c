"""Headline classifier figures over training seeds: the pipeline's recipe, the split fixed.

The pipeline trains each classifier once (``seed`` of params.yaml). This script retrains the
binary ResNet-18 and its three-class fine-tune with other training seeds on the pipeline's own
prepared arrays (``data/processed``: the patient split stays that of ``data.split_seed``),
calibrates each on its val predictions and scores it as the pipeline does: ``evaluate`` on val
and the dev test (in distribution), ``evaluate_external`` on each prepared external set
(``data/external/<set>``). Every external set's figures are logged as a look in
``bench/results/external_looks.jsonl`` (chosen on: nothing; this is a report) under the hash
of the run's ``results/params.json``, as ``external_look.py`` logs the run itself. With
``--results`` the pipeline's own run (its seed) joins the table as one more seed.

    python bench/seed_spread.py --configfile config/cpu.yaml config/shared.yaml --seeds 1 2 \\
        --workdir /tmp/seeds --results results --out bench/results/seed_spread_128px.json

Run the pipeline with the same ``--configfile`` first (it writes the arrays and the external
sets' ``data.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from _common import REPO, write
from external_look import LOG, log_look
from pneumocxr.calibration import run_calibration
from pneumocxr.config import load_params
from pneumocxr.evaluate import run_evaluation
from pneumocxr.external import ClassifierFiles, run_external_evaluation
from pneumocxr.joint import run_fold
from pneumocxr.train import run_training
from pneumocxr.utils import set_threads

TASKS = ("binary", "three_class")


def _v(node: Any) -> float | None:
    return round(float(node["value"]), 4) if isinstance(node, dict) else None


def headline(dev: dict[str, dict], external: dict[str, dict], arch: str) -> dict[str, Any]:
    """The issue's figures of one seed: ``dev`` = {task: evaluate metrics}, ``external`` =
    {set: evaluate_external metrics}."""
    b, t = dev["binary"]["test"], dev["three_class"]["test"]
    out: dict[str, Any] = {
        "dev_test": {"binary_auroc": _v(b["auroc"]),
                     "binary_accuracy": _v(b["at_operating"]["accuracy"]),
                     "binary_specificity": _v(b["at_operating"]["specificity"]),
                     "three_class_accuracy": _v(t["accuracy"]),
                     "val_binary_auroc": _v(dev["binary"]["val"]["auroc"])}}
    for name, m in external.items():
        cb = m["classifiers"][f"binary_{arch}"]["normal_vs_pneumonia"]
        c3 = m["classifiers"][f"three_class_{arch}"]
        out[name] = {"binary_auroc": _v(cb["auroc"]),
                     "binary_accuracy": _v(cb["at_operating"]["accuracy"]),
                     "binary_specificity": _v(cb["at_operating"]["specificity"]),
                     "binary_sensitivity": _v(cb["at_operating"]["sensitivity"]),
                     "three_class_accuracy": _v(c3["three_class"]["accuracy"])
                     if c3.get("three_class") else None,
                     "folded_specificity": _v(c3["normal_vs_pneumonia"]["at_operating"]
                                              ["specificity"])}
    return out


def spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sample sd, min and max over seeds of every figure."""
    out: dict[str, Any] = {}
    for where in rows[0]["figures"]:
        out[where] = {}
        for key in rows[0]["figures"][where]:
            vals = [r["figures"][where][key] for r in rows
                    if r["figures"].get(where, {}).get(key) is not None]
            if not vals:
                continue
            out[where][key] = {"mean": round(statistics.fmean(vals), 4),
                               "sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else None,
                               "min": min(vals), "max": max(vals), "n": len(vals)}
    return out


def train_seed(params: dict, processed: Path, work: Path, seed: int, arch: str) -> dict:
    """Train, calibrate and evaluate (val, dev test) both tasks with one training seed, as the
    pipeline does: binary then the three-class fine-tune, or with ``train.joint_head`` the
    three-class network and its fold."""
    train = params["train"]
    files, dev, seconds = {}, {}, {}
    init = train["weights"]
    joint = bool(train.get("joint_head"))
    for task in (tuple(reversed(TASKS)) if joint else TASKS):
        model = work / "models" / task / arch / "best.pt"
        res = work / "results" / task / arch
        t0 = time.perf_counter()
        outputs = {"model": model, "val_predictions": res / "val_predictions.csv"}
        if joint and task == "binary":
            three = work / "models" / "three_class" / arch / "best.pt"
            run_fold(three, work / "results" / "three_class" / arch / "val_predictions.csv",
                     outputs)
        else:
            run_training(processed, {**outputs, "history": res / "history.csv"},
                         task=task, arch=arch, train_params=train, seed=seed, device="cpu",
                         init=init, resume_root=work / "resume")
        seconds[task] = round(time.perf_counter() - t0, 1)
        calibration = model.parent / "calibration.json"
        run_calibration(res / "val_predictions.csv", calibration, params["calibrate"])
        dev[task] = run_evaluation(model, processed, {"metrics": res / "metrics.json"},
                                   task=task, calibration=calibration,
                                   params=params["evaluate"], seed=params["seed"])
        files[task] = ClassifierFiles(task=task, arch=arch, model=str(model),
                                      calibration=str(calibration))
        init = model
    return {"files": files, "dev": dev, "train_seconds": seconds}


def score_external(params: dict, files: dict[str, ClassifierFiles], workflow: Path,
                   out: Path) -> dict:
    ex, ev = params["explain"], params["evaluate"]
    metrics = {}
    for name in sorted(params["external"]):
        data = workflow / "data" / "external" / name
        metrics[name] = run_external_evaluation(
            data, workflow / "results" / "external" / name / "data.json", list(files.values()),
            {"metrics": out / name / "metrics.json", "predictions": out / name / "predictions.csv",
             "roc": out / name / "roc.png"},
            evaluate=ev, shortcut=ex["shortcut"], lung_mask=ex["lung_mask"],
            share_n_per_class=ex["share_n_per_class"], seed=params["seed"], device="cpu")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workflow", default=str(REPO),
                    help="the folder the pipeline ran in (its params.yaml, data/, results/)")
    ap.add_argument("--configfile", nargs="*", default=[],
                    help="the pipeline run's overlays over params.yaml, in order")
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="training seeds")
    ap.add_argument("--processed", default=None, help="default: <workflow>/data/processed")
    ap.add_argument("--looks", default=str(LOG), help="the external-look log to append to")
    ap.add_argument("--results", default=None,
                    help="the pipeline's results folder: its run joins as one more seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True, help="JSON summary to write")
    args = ap.parse_args(argv)
    workflow = Path(args.workflow)
    params = load_params(workflow / "params.yaml", args.configfile)
    processed = Path(args.processed or workflow / "data" / "processed")
    if not (processed / "info.json").is_file():
        ap.error(f"--processed {processed}: no prepared arrays (run the pipeline with the same "
                 "--configfile first)")
    run_params = workflow / "results" / "params.json"
    if not run_params.is_file():
        ap.error(f"{run_params}: missing (run the pipeline with the same --configfile first)")
    for name in params["external"]:
        if not (workflow / "results" / "external" / name / "data.json").is_file():
            ap.error(f"external set {name!r}: results/external/{name}/data.json is missing "
                     "(run the pipeline's prepare_external first)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_threads(args.threads)
    work = Path(args.workdir)
    os.environ.setdefault("PNEUMOCXR_RESUME_DIR", str(work / "resume"))
    arch = params["train"]["archs"][0]
    rows = []
    if args.results:
        res = Path(args.results)
        dev = {t: json.loads((res / "classify" / t / arch / "metrics.json").read_text())
               for t in TASKS}
        ext = {n: json.loads((res / "external" / n / "metrics.json").read_text())
               for n in sorted(params["external"])}
        rows.append({"seed": params["seed"], "source": f"{res} (the pipeline's run)",
                     "figures": headline(dev, ext, arch)})
    for seed in args.seeds:
        run = train_seed(params, processed, work / f"seed{seed}", seed, arch)
        ext = score_external(params, run["files"], workflow, work / f"seed{seed}" / "external")
        for name, m in ext.items():
            log_look(name, m, run_params.read_bytes(), purpose=f"seed spread of the shipped recipe: training "
                     f"seed {seed}", chosen_on="nothing: a report over seeds",
                     log=Path(args.looks), seed=seed)
        rows.append({"seed": seed, "source": "retrained here",
                     "train_seconds": run["train_seconds"],
                     "figures": headline(run["dev"], ext, arch)})
        logging.info("seed %d: %s", seed, json.dumps(rows[-1]["figures"]))
    payload = {
        "what": (f"{arch} binary + three-class fine-tune, the pipeline's recipe "
                 f"({' '.join(args.configfile) or 'params.yaml'}), training seeds varied with "
                 "the patient split fixed; accuracy and specificity at the shipped operating "
                 "point (calibrate.rule); dev_test is in distribution, the external sets are "
                 "reported, never chosen on"),
        "configfiles": args.configfile, "threads": torch.get_num_threads(),
        "seeds": rows, "spread": spread(rows),
    }
    write(args.out, payload)
    print(json.dumps(payload["spread"], indent=1))
    return payload


if __name__ == "__main__":
    main()
