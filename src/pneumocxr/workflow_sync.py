"""Keep the DVC twin, the conda env and the code-dependency table generated from their sources.

* ``dvc.yaml`` is generated from the Snakemake workflow: one DVC stage per Snakemake job of
  ``all`` (plus the demo-data job), with the same script, inputs, outputs, params keys and
  library code. A rule's params name the exact dotted keys its step reads
  (``train.epochs``, ``anomaly.score``, ...); the stage lists the same keys, and its command
  passes them (``--params``) so the script reads exactly those. Outputs named ``metrics*`` or
  ``summary`` become DVC metrics; PNG figures and ``history`` CSVs become DVC plots. A path
  under a directory that a param names (``data.root``) becomes a templated dependency
  (``${data.root}``), so ``dvc exp run -S data.root=...`` follows the param.
* Code is a dependency: :func:`code_deps` is the import closure of a script within
  ``src/pneumocxr`` (every module it imports, directly or through other modules, at any depth
  and inside functions too). Snakemake rules take it as their ``code`` input and DVC stages as
  deps, so editing a module reruns exactly the stages that run it, under both engines.
  ``docs/code_dependencies.md`` tabulates it per module.
* ``workflow/envs/pneumocxr.yaml`` (for ``snakemake --use-conda``) is generated from the exact
  pins in ``requirements.txt``; ``pneumocxr.post-deploy.sh`` beside it installs the project.

dvc.yaml holds the stages of one set of architectures and tasks (:func:`~pneumocxr.config.
dag_structure` of params.yaml); each command carries them (``--dag``) and refuses a params
file that asks for others, naming the key and the fix (regenerate).

Usage::

    python -m pneumocxr.workflow_sync            # rewrite the generated files
    python -m pneumocxr.workflow_sync --check    # exit 1 (with a diff) if one is stale
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .codedeps import PACKAGE_DIR
from .config import dag_structure, flatten
from .errors import InputError

DEMO_ROOT = "data/demo/chest_xray"
DEMO_SITE_ROOT = "data/demo/site2"
#: the external test set the generation reads the per-set rules from: its name and path become
#: DVC's foreach ``${key}`` and ``${item.path}``, so ``external`` drives the stages that exist
SENTINEL_SET = "external_set"
ENV_FILE = Path("workflow/envs/pneumocxr.yaml")
CODE_TABLE = Path("docs/code_dependencies.md")
HEADER = (
    "# GENERATED from the Snakemake workflow by `python -m pneumocxr.workflow_sync`\n"
    "# (`make dvc.yaml`); do not edit by hand. tests/test_workflow.py checks it is current.\n"
)
DRIVERS = {"snakemake", "dvc"}  # run the workflow; not needed inside a rule's env
#: the input name that carries a script's library modules (deps, not passed to the script)
CODE_INPUT = "code"
#: the param name that stands for every key of the params file
ALL_PARAMS = "all"


# ----------------------------------------------------------------------------- Snakemake jobs


@dataclass
class JobSpec:
    rule: str
    wildcards: dict[str, str]
    script: str
    input: dict[str, list[str]]
    output: dict[str, str]
    log: str | None
    threads: int
    params: dict[str, Any]


def snakemake_jobs(snakefile: str | Path = "Snakefile", params_file: str | Path = "params.yaml"
                   ) -> tuple[list[JobSpec], dict[str, Any]]:
    """Jobs of target ``all`` (and the demo data) for params.yaml with the data source set to
    the demo, so that no raw data is needed to read the workflow."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings,
                                          ResourceSettings)

    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp) / "sync.yaml"
        overlay.write_text(yaml.safe_dump({"data": {"source": "demo", "root": DEMO_ROOT},
                                           "external": {SENTINEL_SET: {"path": DEMO_SITE_ROOT}}}))
        with SnakemakeApi(OutputSettings(quiet=None)) as api:
            wapi = api.workflow(
                resource_settings=ResourceSettings(cores=1024),
                config_settings=ConfigSettings(configfiles=[Path(params_file), overlay]),
                snakefile=Path(snakefile),
            )
            wapi.dag(DAGSettings(targets={"all", DEMO_ROOT, DEMO_SITE_ROOT}, forceall=True))
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
                    raise InputError(f"rule {job.rule.name}: only script: rules can have a DVC twin")
                script = os.path.normpath(os.path.join(
                    os.path.relpath(job.rule.basedir), str(job.rule.script)))
                inputs = {}
                for name, value in job.input._allitems():
                    if name is None:
                        raise InputError(f"rule {job.rule.name}: name every input")
                    inputs[name] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
                outputs = {}
                for name, value in job.output._allitems():
                    if name is None:
                        raise InputError(f"rule {job.rule.name}: name every output")
                    outputs[name] = str(value)
                specs.append(JobSpec(
                    rule=job.rule.name,
                    wildcards=dict(job.wildcards_dict),
                    script=script,
                    input=inputs,
                    output=outputs,
                    log=str(job.log[0]) if len(job.log) else None,
                    threads=int(job.threads),
                    params=dict(job.params.items()),
                ))
    specs.sort(key=lambda s: (s.rule, sorted(s.wildcards.items())))
    return specs, config


def params_keys(params: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """The fewest dotted keys of ``config`` that a rule's params cover, e.g. a ``train`` param
    holding the recipe keys -> ``train.epochs``, ``train.lr``, ..., ``train.binary``.

    A param's name is a top-level key of the config and its value a part of that key's value
    (whole sections stay one key); ``all`` stands for the whole params file.
    """
    keys: list[str] = []

    def walk(prefix: str, part: Any, full: Any) -> None:
        if part == full:
            keys.append(prefix)
        elif isinstance(part, Mapping) and isinstance(full, Mapping) and set(part) <= set(full):
            for k in part:
                walk(f"{prefix}.{k}", part[k], full[k])
        else:
            raise InputError(f"param {prefix} = {part!r} is not the config's value there "
                             f"({full!r}); a rule's params must be parts of the config")

    for name, value in params.items():
        if name == ALL_PARAMS:
            keys.append(ALL_PARAMS)
            continue
        if name not in config:
            raise InputError(f"param {name!r} is not a params key: a rule passes parts of the "
                             "config (wildcards carry task and arch)")
        walk(name, value, config[name])
    return keys


# ----------------------------------------------------------------------------- dvc.yaml


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
    """``rule_<wildcard values>``, leaving out values the rule's name already says
    (``evaluate_binary`` of task binary, arch resnet18 -> ``evaluate_binary_resnet18``); a
    per-external-set rule is one DVC ``foreach`` stage named after the rule."""
    if "set" in spec.wildcards:
        return spec.rule
    values = [re.sub(r"[^A-Za-z0-9_-]", "-", v) for v in spec.wildcards.values()]
    parts = [spec.rule] + [v for v in values if not spec.rule.endswith(f"_{v}")]
    return "_".join(parts)


def dvc_stages(specs: list[JobSpec], config: dict[str, Any]) -> dict[str, Any]:
    # Params that name paths (for templated deps): string values that look like paths.
    config_paths = {k: v for k, v in flatten(config).items()
                    if isinstance(v, str) and "/" in v and k.endswith(("root", "path"))}
    per_set_dir = f"/{SENTINEL_SET}/"
    dag_words = [f"{k}={','.join(v)}" for k, v in dag_structure(config).items()]
    stages: dict[str, Any] = {}
    for spec in specs:
        deps = [spec.script]
        cmd_inputs = []
        per_set = "set" in spec.wildcards
        for name, paths in spec.input.items():
            templ = sorted({_templated(p, config_paths) for p in paths})
            if not per_set and any(per_set_dir in t for t in templ):
                # a stage that reads every external set (the summary): DVC has no list of
                # them, so it depends on their folder; the script reads sets.json
                templ = sorted({t.split(per_set_dir)[0] for t in templ})
                deps[:] = [d for d in deps if not any(d.startswith(t + "/") for t in templ)]
                deps.extend(t for t in templ if t not in deps)
                continue
            deps.extend(t for t in templ if t not in deps
                        and not any(t.startswith(d + "/") for d in deps))
            if name != CODE_INPUT:
                cmd_inputs.extend(f"{name}={t}" for t in templ)
        keys = params_keys(spec.params, config)
        if per_set:   # the generation has one set: its own entry, not the whole section
            keys = [f"external.{SENTINEL_SET}" if k == "external" else k for k in keys]
        cmd = ["python", spec.script, "--rule", spec.rule]
        if spec.wildcards:
            cmd += ["--wildcards", *[f"{k}={v}" for k, v in spec.wildcards.items()]]
        if cmd_inputs:
            cmd += ["--input", *cmd_inputs]
        cmd += ["--output", *[f"{n}={p}" for n, p in spec.output.items()]]
        if spec.log:
            cmd += ["--log", spec.log]
        cmd += ["--threads", str(spec.threads)]
        if keys:
            cmd += ["--params", *keys]
        cmd += ["--dag", *dag_words]
        stage: dict[str, Any] = {"cmd": " ".join(cmd), "deps": deps}
        if keys:
            stage["params"] = [{"params.yaml": None} if k == ALL_PARAMS else k for k in keys]
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
        if per_set:
            stage = {"foreach": "${external}", "do": _per_set(stage)}
        stages[stage_name(spec)] = stage
    return {"stages": stages}


def _per_set(stage: dict[str, Any]) -> dict[str, Any]:
    """The sentinel set's stage as the ``do`` of a foreach over params ``external``."""
    text = json.dumps(stage)
    text = text.replace("${external.%s.path}" % SENTINEL_SET, "${item.path}")
    return json.loads(text.replace(SENTINEL_SET, "${key}"))


def render_dvc_yaml(snakefile: str | Path = "Snakefile", params_file: str | Path = "params.yaml"
                    ) -> str:
    specs, config = snakemake_jobs(snakefile, params_file)
    return HEADER + yaml.safe_dump(dvc_stages(specs, config), sort_keys=False, width=100)


# ----------------------------------------------------------------------------- code table


def downstream(stages: Mapping[str, Any]) -> dict[str, set[str]]:
    """For each stage, every stage that depends on its outputs (transitively)."""
    stages = {name: st.get("do", st) for name, st in stages.items()}
    producer = {out: name for name, st in stages.items()
                for out in _declared_outputs(st)}
    children: dict[str, set[str]] = {name: set() for name in stages}
    for name, st in stages.items():
        for dep in st["deps"]:
            for out, prod in producer.items():
                if dep == out or dep.startswith(out.rstrip("/") + "/") or \
                        out.startswith(dep.rstrip("/") + "/"):
                    children[prod].add(name)
    closure: dict[str, set[str]] = {}

    def visit(name: str) -> set[str]:
        if name not in closure:
            closure[name] = set()
            for c in children[name]:
                closure[name] |= {c} | visit(c)
        return closure[name]

    for name in stages:
        visit(name)
    return closure


def _declared_outputs(stage: Mapping[str, Any]) -> list[str]:
    outs = []
    for key in ("outs", "metrics", "plots"):
        for o in stage.get(key, []):
            outs.append(next(iter(o)) if isinstance(o, dict) else o)
    return outs


def code_table(stages: Mapping[str, Any], package_dir: str | Path = PACKAGE_DIR) -> str:
    """Markdown: per library module, the stages whose code it is (rerun when it changes,
    under both engines) and, under Snakemake, the stages downstream of those too."""
    package_dir = Path(package_dir)
    modules = sorted(str(p) for p in package_dir.rglob("*.py"))
    down = downstream(stages)
    lines = [
        "# What an edit to a library module reruns",
        "",
        "GENERATED by `python -m pneumocxr.workflow_sync` from dvc.yaml (the demo DAG: one",
        "architecture, both tasks); tests/test_workflow.py checks it is current.",
        "",
        "*Direct*: the stages whose script imports the module (at any depth): both engines rerun",
        "them. *Snakemake*: those and every stage downstream of them (Snakemake plans the",
        "downstream jobs before it knows whether an output changed). DVC reruns a downstream",
        "stage only when an output it depends on changed, so an edit that leaves outputs",
        "byte-identical stops after the direct stages.",
        "",
        "| module | direct | Snakemake (direct + downstream) | direct stages |",
        "| --- | --- | --- | --- |",
    ]
    for mod in modules:
        direct = sorted(name for name, st in stages.items() if mod in st.get("do", st)["deps"])
        total = set(direct)
        for name in direct:
            total |= down[name]
        names = ", ".join(direct) if direct else "none (no stage imports it)"
        lines.append(f"| `{mod}` | {len(direct)} | {len(total)} | {names} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- conda env


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
        "# For `snakemake --use-conda`; pneumocxr.post-deploy.sh beside it installs the project\n"
        "# itself into the env. Not built in this project's CI (no conda channel is reachable\n"
        "# there); the pins are the ones CI installs with pip.\n"
        + yaml.safe_dump(env, sort_keys=False)
    )


def _diff(path: Path, new: str) -> str:
    old = path.read_text() if path.is_file() else ""
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        str(path), f"{path} (regenerated)"))


def generated_files() -> dict[Path, str]:
    dvc_text = render_dvc_yaml()
    stages = yaml.safe_load(dvc_text)["stages"]
    return {Path("dvc.yaml"): dvc_text, ENV_FILE: render_env(), CODE_TABLE: code_table(stages)}


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a generated file is stale")
    args = parser.parse_args(None if argv is None else list(argv))
    stale = False
    for path, text in generated_files().items():
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
