"""End to end: the demo pipeline through Snakemake and through DVC, and what reruns when.

Slow (minutes): each test runs the real pipeline on the embedded demo data in a scratch copy
of the workflow.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from pneumocxr.config import deep_merge
from test_workflow import BIN, copy_workflow, run, snakemake, write_overlay

pytestmark = pytest.mark.slow


def planned_rules(dry_run_output: str) -> set[str]:
    """Rule names of the jobs a `snakemake -n` would run (from its job-stats table)."""
    rules, in_table = set(), False
    for line in dry_run_output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table:
            if not parts or parts[0] == "total":
                break
            if not set(parts[0]) <= {"-"}:
                rules.add(parts[0])
    return rules


@pytest.fixture(scope="module")
def demo_run(repo_root, tmp_path_factory):
    """The whole demo pipeline, run once by Snakemake (as `make demo` does)."""
    work = copy_workflow(repo_root, tmp_path_factory.mktemp("smk"))
    snakemake("all", "--configfile", "config/demo.yaml", cwd=work)
    return work


def test_demo_pipeline_builds_every_target_and_labels_it_synthetic(demo_run):
    summary = json.loads((demo_run / "results/data/summary.json").read_text())
    assert summary["data_source"] == "demo"
    assert (demo_run / "results/data/overview.png").stat().st_size > 10_000
    assert (demo_run / "logs/prepare.log").read_text().strip()


def test_snakemake_reruns_nothing_when_nothing_changed(demo_run):
    proc = snakemake("all", "-n", "--configfile", "config/demo.yaml", cwd=demo_run)
    assert planned_rules(proc.stdout + proc.stderr) == set()


def test_snakemake_reruns_prepare_and_what_follows_when_a_prepare_param_changes(demo_run, tmp_path):
    overlay = write_overlay(tmp_path / "clahe.yaml", {"prepare": {"clahe": {"clip_limit": 3.0}}})
    proc = snakemake("all", "-n", "--configfile", "config/demo.yaml", str(overlay), cwd=demo_run)
    planned = planned_rules(proc.stdout + proc.stderr)
    assert "prepare" in planned and "make_demo" not in planned


def test_snakemake_reruns_prepare_when_one_raw_image_is_replaced(demo_run, tmp_path):
    raw = demo_run / "data/raw/chest_xray"
    shutil.copytree(demo_run / "data/demo/chest_xray", raw)
    overlay = write_overlay(tmp_path / "raw.yaml", {"data": {"source": "kermany", "root": str(raw)}})
    args = ("results/data/summary.json", "--configfile", "config/demo.yaml", str(overlay))
    snakemake(*args, cwd=demo_run)
    assert planned_rules(snakemake(*args, "-n", cwd=demo_run).stdout) == set()
    victim = sorted((raw / "train/NORMAL").iterdir())[0]
    victim.write_bytes(sorted((raw / "train/NORMAL").iterdir())[1].read_bytes())
    assert planned_rules(snakemake(*args, "-n", cwd=demo_run).stdout) == {"prepare"}


def dvc(*args: str, cwd: Path, check: bool = True):
    return run([str(BIN / "dvc"), *args], cwd, check)


def test_dvc_repro_runs_the_demo_and_reruns_exactly_what_changed(repo_root, tmp_path, monkeypatch):
    work = copy_workflow(repo_root, tmp_path)
    run(["git", "init", "-q"], work)
    run(["git", "config", "user.email", "ci@example.com"], work)
    run(["git", "config", "user.name", "ci"], work)
    dvc("init", "-q", cwd=work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    demo = yaml.safe_load((work / "config/demo.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, demo), sort_keys=False))
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")  # stage commands call `python`
    dvc("repro", cwd=work)
    assert json.loads((work / "results/data/summary.json").read_text())["data_source"] == "demo"
    assert "up to date" in dvc("status", cwd=work).stdout
    assert "summary.json" in dvc("metrics", "show", cwd=work).stdout

    edited = yaml.safe_load((work / "params.yaml").read_text())
    edited["prepare"]["clahe"]["clip_limit"] = 3.0
    (work / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    status = dvc("status", "--json", cwd=work).stdout
    changed = set(json.loads(status))
    assert "prepare" in changed and "make_demo" not in changed
