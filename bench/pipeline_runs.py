"""Two or more finished pipeline runs side by side: wall time, each rule's time, the figures.

Each run is a workflow folder where ``snakemake ... all`` finished (its ``.snakemake/log``,
``benchmarks/``, ``logs/train`` and ``results/``), named ``NAME=PATH``; the first is the
reference. Per run: the wall time of the newest Snakemake log that completed, each rule's
benchmark seconds, the training epochs' seconds and images/s (an epoch slowed by other work on
the machine shows there), and the val, dev-test and external figures of every classifier. Run
the pipelines one after the other on an otherwise idle machine; compare only runs of one session.

    python bench/pipeline_runs.py --runs base=/work/base joint=/work/joint \
        --out bench/results/pipeline_joint_head.json
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path
from typing import Any

from _common import commit, write

EPOCH = re.compile(r"(\w+)/(\w+) epoch (\d+)/(\d+): .* \| (\d+) s, ([\d.]+) img/s")
ELAPSED = re.compile(r"^Elapsed time: (\d+):(\d+):([\d.]+)", re.M)


def wall_seconds(work: Path) -> float:
    """Wall time of the newest Snakemake log of ``work`` that reports one."""
    for log in sorted((work / ".snakemake" / "log").glob("*.snakemake.log"), reverse=True):
        m = ELAPSED.search(log.read_text())
        if m and "steps (100%) done" in log.read_text():
            h, mi, s = m.groups()
            return round(int(h) * 3600 + int(mi) * 60 + float(s), 1)
    raise SystemExit(f"{work}: no finished Snakemake run in .snakemake/log")


def rule_seconds(work: Path) -> dict[str, float]:
    out = {}
    for tsv in sorted((work / "benchmarks").rglob("*.tsv")):
        with tsv.open() as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        out[str(tsv.relative_to(work / "benchmarks").with_suffix(""))] = round(
            float(rows[-1]["s"]), 1)
    return out


def epochs(work: Path) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {}
    for log in sorted((work / "logs" / "train").rglob("*.log")):
        for m in EPOCH.finditer(log.read_text()):
            out.setdefault(f"{m[1]}/{m[2]}", []).append(
                {"epoch": int(m[3]), "seconds": int(m[5]), "images_per_s": float(m[6])})
    return out


def _v(node: Any) -> Any:
    if isinstance(node, dict) and "value" in node:
        return {k: round(node[k], 4) if isinstance(node[k], float) else node[k]
                for k in ("value", "ci_low", "ci_high") if k in node}
    return node


def figures(work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted((work / "results" / "classify").glob("*/*/metrics.json")):
        m = json.loads(path.read_text())
        key = f"{path.parent.parent.name}_{path.parent.name}"
        out[key] = {split: {"accuracy": _v(m[split]["accuracy"]), "auroc": _v(m[split]["auroc"]),
                            **{f"operating_{k}": _v(m[split]["at_operating"][k])
                               for k in ("sensitivity", "specificity")}}
                    for split in ("val", "test")}
        out[key]["folded_from"] = m.get("folded_from")
    for path in sorted((work / "results" / "external").glob("*/metrics.json")):
        m = json.loads(path.read_text())
        for key, c in m["classifiers"].items():
            nv = c["normal_vs_pneumonia"]
            out.setdefault(key, {})[f"external_{path.parent.name}"] = {
                "auroc": _v(nv["auroc"]),
                **{f"operating_{k}": _v(nv["at_operating"][k])
                   for k in ("accuracy", "sensitivity", "specificity")},
                "three_class_accuracy": _v((c.get("three_class") or {}).get("accuracy")),
                "knn_accuracy": _v((c.get("knn") or {}).get("accuracy_ci95"))}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, metavar="NAME=PATH")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    runs = {}
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--runs {spec!r}: expected NAME=PATH")
        work = Path(path)
        runs[name] = {"path": str(work), "commit": commit(work), "wall_seconds": wall_seconds(work),
                      "rule_seconds": rule_seconds(work), "epochs": epochs(work),
                      "figures": figures(work)}
        train = sum(v for k, v in runs[name]["rule_seconds"].items() if k.startswith("train/"))
        runs[name]["classifier_training_seconds"] = round(train, 1)
    ref = next(iter(runs.values()))
    ratios = {name: {"wall": round(r["wall_seconds"] / ref["wall_seconds"], 3),
                     "classifier_training": round(r["classifier_training_seconds"]
                                                  / ref["classifier_training_seconds"], 3)}
              for name, r in runs.items()}
    payload = {"runs": runs, "ratios_to_first": ratios}
    write(args.out, payload)
    for name, r in runs.items():
        print(f"{name}: wall {r['wall_seconds']:.0f} s, classifier training "
              f"{r['classifier_training_seconds']:.0f} s, ratios {ratios[name]}")
    return payload


if __name__ == "__main__":
    main()
