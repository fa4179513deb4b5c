"""Collect one model-comparison run (the study's Figure 3) into a committed JSON.

Reads what the pipeline wrote in ``--workdir``: ``results/classify/model_comparison.csv`` (the
chart's numbers, ranks and convergence), each model's ``history.csv`` and the seconds per epoch
from its training log, and copies the chart. Run it after the comparison itself::

    snakemake --cores 2 results/classify/model_comparison.png \\
        --configfile config/compare.yaml config/shared.yaml bench/compare_budget.yaml
    python bench/model_comparison.py --workdir . --out bench/results/model_comparison_64px.json
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, write  # noqa: E402

PIPELINE = ("snakemake --cores 2 results/classify/model_comparison.png --configfile "
            "config/compare.yaml config/shared.yaml bench/compare_budget.yaml")
EPOCH_SECONDS = re.compile(r" epoch \d+/\d+: .* \| (\d+) s, ")


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise SystemExit(f"{path}: missing; run the comparison first ({PIPELINE})")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def collect(workdir: Path) -> dict:
    results = workdir / "results" / "classify"
    models: dict[str, dict] = {}
    for row in _rows(results / "model_comparison.csv"):     # one row per (model, metric)
        key = f"{row['task']}/{row['arch']}"
        if key not in models:
            log = workdir / "logs" / "train" / row["task"] / f"{row['arch']}.log"
            seconds = EPOCH_SECONDS.findall(log.read_text()) if log.is_file() else []
            models[key] = {
                "label": row["model"], "converged": row["converged"] == "True",
                "rank": int(row["rank"]) if row["rank"] else None,
                "val_auroc": [round(float(row[k]), 4) for k in
                              ("val_auroc", "val_auroc_ci_low", "val_auroc_ci_high")],
                "dev_test": {},
                "history": [{k: float(v) for k, v in h.items()} for h in
                            _rows(results / row["task"] / row["arch"] / "history.csv")],
                "train_seconds": float(sum(map(int, seconds))) if seconds else None}
        models[key]["dev_test"][row["metric"]] = [round(float(row[k]), 4)
                                                  for k in ("value", "ci_low", "ci_high")]
    return models


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=".", help="where the comparison ran (results/, logs/)")
    ap.add_argument("--out", required=True, help="JSON to write; the chart is copied beside it")
    ap.add_argument("--what", default=(
        "the study's Figure 3 on the shared Kermany copy: from scratch, 64 px, binary 4 + "
        "three-class 3 epochs (bench/compare_budget.yaml over config/compare.yaml), the "
        "params.yaml recipe with its train.per_arch overrides, bf16 autocast; figures on the "
        "in-distribution dev test with 95% patient-bootstrap CIs; 'converged' = the val AUROC "
        "CI's lower end above 0.5"))
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    payload = {"pipeline": PIPELINE, "run_commit": commit(workdir), "what": args.what,
               "models": collect(workdir)}
    out = write(args.out, payload)
    shutil.copyfile(workdir / "results" / "classify" / "model_comparison.png",
                    out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return payload


if __name__ == "__main__":
    main()
