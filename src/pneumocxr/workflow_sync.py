"""Keep the DVC twin and the conda envs generated from their one source of truth.

* ``dvc.yaml`` is generated from the Snakemake workflow: one DVC stage per Snakemake job of
  ``all`` (plus the demo-data job), with the same script, inputs, outputs and params sections.
  Outputs named ``metrics*`` or ``summary`` become DVC metrics; PNG figures and ``history``
  CSVs become DVC plots; everything else is an ordinary out. A path under a directory that a
  param names (``data.root``) becomes a templated dependency (``${data.root}``), so
  ``dvc exp run -S data.root=...`` follows the param.
* ``workflow/envs/pneumocxr.yaml`` (for ``snakemake --use-conda``) is generated from the exact
  pins in ``requirements.txt``.

Usage::

    python -m pneumocxr.workflow_sync            # rewrite dvc.yaml and the env file
    python -m pneumocxr.workflow_sync --check    # exit 1 (with a diff) if either is stale
"""

from __future__ import annotations

import argparse
import copy
import difflib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import flatten

DEMO_ROOT = "data/demo/chest_xray"
ENV_FILE = Path("workflow/envs/pneumocxr.yaml")
HEADER = (
    "# GENERATED from the Snakemake workflow by `python -m pneumocxr.workflow_sync`\n"
    "# (`make dvc.yaml`); do not edit by hand. tests/test_workflow_sync.py checks it is current.\n"
)
DRIVERS = {"snakemake", "dvc"}  # run the workflow; not needed inside a rule's env


@dataclass
class JobSpec:
    rule: str
    wildcards: dict[str, str]
    script: str
    input: dict[str, list[str]]
    output: dict[str, str]
    log: str | None
    threads: int
    params: list[str]


def snakemake_jobs(snakefile: str | Path = "Snakefile", params_file: str | Path = "params.yaml"
                   ) -> tuple[list[JobSpec], dict[str, Any]]:
    """Jobs of target ``all`` (and the demo data) for params.yaml with the data source set to
    the demo, so that no raw data is needed to read the workflow."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings,
                                          ResourceSettings)

    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp) / "sync.yaml"
        overlay.write_text(yaml.safe_dump({"data": {"source": "demo", "root": DEMO_ROOT}}))
        with SnakemakeApi(OutputSettings(quiet=None)) as api:
            wapi = api.workflow(
                resource_settings=ResourceSettings(cores=1024),
                config_settings=ConfigSettings(configfiles=[Path(params_file), overlay]),
                snakefile=Path(snakefile),
            )
            wapi.dag(DAGSettings(targets={"all", DEMO_ROOT}, forceall=True))
            wf = wapi._workflow
            wf._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True,
                            nolock=True)
            wf._build_dag()
            config = copy.deepcopy(dict(wf.config))
            specs = []
            for job in wf.dag.jobs:
                if job.rule.name == "all":
                    continue
                if not job.rule.script:
                    raise ValueError(f"rule {job.rule.name}: only script: rules can have a DVC twin")
                script = os.path.normpath(os.path.join(
                    os.path.relpath(job.rule.basedir), str(job.rule.script)))
                inputs = {}
                for name, value in job.input._allitems():
                    if name is None:
                        raise ValueError(f"rule {job.rule.name}: name every input")
                    inputs[name] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
                outputs = {}
                for name, value in job.output._allitems():
                    if name is None:
                        raise ValueError(f"rule {job.rule.name}: name every output")
                    outputs[name] = str(value)
                specs.append(JobSpec(
                    rule=job.rule.name,
                    wildcards=dict(job.wildcards_dict),
                    script=script,
                    input=inputs,
                    output=outputs,
                    log=str(job.log[0]) if len(job.log) else None,
                    threads=int(job.threads),
                    params=list(job.params.keys()),
                ))
    specs.sort(key=lambda s: (s.rule, sorted(s.wildcards.items())))
    return specs, config


def _templated(path: str, config_paths: dict[str, str]) -> str:
    """``data/demo/chest_xray/x.png`` -> ``${data.root}`` when a param names a parent folder."""
    for key, value in config_paths.items():
        if path == value or path.startswith(value.rstrip("/") + "/"):
            return "${" + key + "}"
    return path


def _category(name: str, path: str) -> str:
    if name.startswith("metrics") or name == "summary":
        return "metrics"
    if path.endswith(".png") or name.startswith("history"):
        return "plots"
    return "outs"


def stage_name(spec: JobSpec) -> str:
    parts = [spec.rule] + [re.sub(r"[^A-Za-z0-9_-]", "-", v) for v in spec.wildcards.values()]
    return "_".join(parts)


def dvc_stages(specs: list[JobSpec], config: dict[str, Any]) -> dict[str, Any]:
    # Params that name paths (for templated deps): string values that look like paths.
    config_paths = {k: v for k, v in flatten(config).items()
                    if isinstance(v, str) and "/" in v and k.endswith("root")}
    stages: dict[str, Any] = {}
    for spec in specs:
        deps = [spec.script]
        cmd_inputs = []
        for name, paths in spec.input.items():
            templ = sorted({_templated(p, config_paths) for p in paths})
            deps.extend(t for t in templ if t not in deps)
            cmd_inputs.extend(f"{name}={t}" for t in templ)
        cmd = ["python", spec.script, "--rule", spec.rule]
        if cmd_inputs:
            cmd += ["--input", *cmd_inputs]
        cmd += ["--output", *[f"{n}={p}" for n, p in spec.output.items()]]
        if spec.log:
            cmd += ["--log", spec.log]
        cmd += ["--threads", str(spec.threads)]
        if spec.params:
            cmd += ["--params", *spec.params]
        stage: dict[str, Any] = {"cmd": " ".join(cmd), "deps": deps}
        if spec.params:
            stage["params"] = list(spec.params)
        groups: dict[str, list[Any]] = {"outs": [], "metrics": [], "plots": []}
        for name, path in spec.output.items():
            category = _category(name, path)
            if category == "plots" and name.startswith("history"):
                groups[category].append({path: {"x": "epoch"}})  # per-epoch curves
            else:
                groups[category].append(path)
        for key in ("outs", "metrics", "plots"):
            if groups[key]:
                stage[key] = groups[key]
        stages[stage_name(spec)] = stage
    return {"stages": stages}


def render_dvc_yaml(snakefile: str | Path = "Snakefile", params_file: str | Path = "params.yaml") -> str:
    specs, config = snakemake_jobs(snakefile, params_file)
    return HEADER + yaml.safe_dump(dvc_stages(specs, config), sort_keys=False, width=100)


def render_env(requirements: str | Path = "requirements.txt") -> str:
    pins = []
    for line in Path(requirements).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[=<>!~\[ ]", line, maxsplit=1)[0].lower()
        if name not in DRIVERS:
            pins.append(line)
    env = {
        "name": "pneumocxr",
        "channels": ["conda-forge", "nodefaults"],
        "dependencies": ["python=3.11", "pip", {"pip": pins}],
    }
    return (
        "# GENERATED from requirements.txt by `python -m pneumocxr.workflow_sync`; do not edit.\n"
        "# For `snakemake --use-conda`. Not built in this project's CI (no conda channel is\n"
        "# reachable there); the pins are the ones CI installs with pip.\n"
        + yaml.safe_dump(env, sort_keys=False)
    )


def _diff(path: Path, new: str) -> str:
    old = path.read_text() if path.is_file() else ""
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        str(path), f"{path} (regenerated)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a generated file is stale")
    args = parser.parse_args(argv)
    outputs = {Path("dvc.yaml"): render_dvc_yaml(), ENV_FILE: render_env()}
    stale = False
    for path, text in outputs.items():
        diff = _diff(path, text)
        if not diff:
            continue
        if args.check:
            stale = True
            sys.stdout.write(diff)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("generated files are stale: run `make dvc.yaml` and commit", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
