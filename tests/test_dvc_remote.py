"""DVC remotes: the pipeline's data and artifacts go to a remote and come back identical.

Runs the cheap stages (make_demo, prepare) with DVC in a scratch git repository holding a copy
of the workflow, pushes their outputs to a local-directory remote, deletes the workspace copies
and the cache, pulls, and checks every file is back bit for bit with `dvc status` clean. An S3
or SSH remote differs only in `dvc remote add` (README, "DVC remotes").
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import yaml

from pneumocxr.config import deep_merge
from test_scaleout import TINY
from test_workflow import BIN, copy_workflow, run

pytestmark = pytest.mark.slow

# the outputs of make_demo and prepare (dvc.yaml outs, metrics and plots)
OUTPUTS = ("data/demo/chest_xray", "data/processed", "results/data/summary.json",
           "results/data/rejected.csv", "results/data/overview.png")


def dvc(*args: str, cwd: Path) -> str:
    return run([str(BIN / "dvc"), *args], cwd).stdout


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of the pipeline outputs, by path relative to ``root``."""
    hashes = {}
    for name in OUTPUTS:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            hashes[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return hashes


def test_outputs_pushed_to_a_local_remote_come_back_identical(repo_root, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    copy_workflow(repo_root, work)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"]):
        run(cmd, work)
    dvc("init", "-q", cwd=work)
    params = yaml.safe_load((work / "params.yaml").read_text())   # the copy's, not the repo's
    demo = yaml.safe_load((work / "config/demo.yaml").read_text())
    merged = deep_merge(deep_merge(params, demo), TINY)
    (work / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")   # stage commands call `python`
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    dvc("repro", "prepare", cwd=work)
    before = tree_hashes(work)
    assert any(p.startswith("data/demo/chest_xray/train/") for p in before)
    assert any(p.startswith("data/processed/") for p in before)

    remote = tmp_path / "remote"
    dvc("remote", "add", "-d", "storage", str(remote), cwd=work)
    dvc("push", "--with-deps", "prepare", cwd=work)     # the stages that ran
    stages = ("--with-deps", "prepare")
    assert any(p.is_file() for p in remote.rglob("*"))

    for name in OUTPUTS:
        path = work / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(work / ".dvc/cache")
    assert "deleted" in dvc("status", *stages, cwd=work)

    dvc("pull", *stages, cwd=work)
    assert tree_hashes(work) == before
    assert "Data and pipelines are up to date" in dvc("status", *stages, cwd=work)
    assert "in sync" in dvc("status", "--cloud", *stages, cwd=work)
