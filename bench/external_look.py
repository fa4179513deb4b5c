"""Log one look at an external test set: append its figures to bench/results/external_looks.jsonl.

The shifted held-out set (``../shared/data/kermany/external_shift_check``) reports and may veto
a change; it never selects one. Every time its figures are read, this script records them
with the commit, a hash of the run's resolved params (``results/params.json``), what the look
was for, and on what the choice under test was made, so the log shows that nothing was
chosen by looking:

    python bench/external_look.py --set shifted --purpose "baseline: the recipe before ..." \
        --chosen-on "val" [--results results]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from _common import REPO, commit, machine

LOG = REPO / "bench" / "results" / "external_looks.jsonl"


def _v(node):
    if not isinstance(node, dict):
        return None
    return {k: (round(node[k], 4) if isinstance(node.get(k), float) else node.get(k))
            for k in ("value", "ci_low", "ci_high")}


def figures(metrics: dict) -> dict:
    out = {}
    for key, c in metrics["classifiers"].items():
        nv = c["normal_vs_pneumonia"]
        row = {"auroc": _v(nv["auroc"]),
               "operating_threshold": {"rule": c["operating_threshold"]["rule"],
                                       "value": c["operating_threshold"]["value"]}}
        for at in ("at_half", "at_operating"):
            row[at] = {m: _v(nv[at][m]) for m in ("accuracy", "sensitivity", "specificity")}
        if c.get("three_class"):
            row["three_class_accuracy"] = _v(c["three_class"]["accuracy"])
        if c.get("knn"):
            row["knn_accuracy"] = round(c["knn"]["accuracy"], 4)
        out[key] = row
    a = metrics.get("anomaly")
    if a:
        out["anomaly"] = {m: _v(a[m]) for m in ("auroc", "sensitivity", "specificity")}
        out["anomaly"]["score"] = a.get("score")
        if a.get("baseline"):
            b = a["baseline"]
            out["anomaly"]["baseline"] = {"method": b.get("method"),
                                          **{m: _v(b[m]) for m in ("auroc", "sensitivity",
                                                                   "specificity",
                                                                   "auroc_difference")}}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="shifted")
    ap.add_argument("--results", default=str(REPO / "results"))
    ap.add_argument("--purpose", required=True, help="why the set was looked at")
    ap.add_argument("--chosen-on", required=True,
                    help="what the change under test was chosen on (val, proxy, train, none)")
    args = ap.parse_args()
    res = Path(args.results)
    metrics = json.loads((res / "external" / args.set / "metrics.json").read_text())
    entry = log_look(args.set, metrics, (res / "params.json").read_bytes(),
                     purpose=args.purpose, chosen_on=args.chosen_on)
    print(json.dumps(entry["figures"], indent=1))
    return 0


def log_look(name: str, metrics: dict, params: bytes, *, purpose: str, chosen_on: str,
             log: Path = LOG, **extra) -> dict:
    """Append one look at external set ``name`` (its ``metrics.json``, the run's resolved
    ``params`` as bytes) to ``log`` and return the entry."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit(),
             "config_sha256": hashlib.sha256(params).hexdigest()[:16],
             "set": name, "n_images": metrics["n_images"], "purpose": purpose,
             "chosen_on": chosen_on, "machine": machine()["cpu"], **extra,
             "figures": figures(metrics)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    return entry


if __name__ == "__main__":
    raise SystemExit(main())
