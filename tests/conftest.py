"""Shared fixtures. Real-data tests read ../shared/data and skip cleanly when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def kermany_root() -> Path:
    """The shared Kermany folder in the Kaggle layout (read-only)."""
    root = SHARED_DATA / "kermany" / "chest_xray"
    if not root.is_dir():
        pytest.skip(f"real data not available at {root}")
    return root


@pytest.fixture(scope="session")
def kermany_manifest() -> Path:
    path = SHARED_DATA / "kermany" / "manifest.csv"
    if not path.is_file():
        pytest.skip(f"real data manifest not available at {path}")
    return path


@pytest.fixture(scope="session")
def medmnist_npz() -> Path:
    path = SHARED_DATA / "medmnist" / "pneumoniamnist_dev.npz"
    if not path.is_file():
        pytest.skip(f"PneumoniaMNIST npz not available at {path}")
    return path


#: README's DVC route for the demo, exactly as a user types it (make dvc-demo runs it too)
README_DVC_DEMO = "dvc exp run $(pneumocxr params --overlay config/demo.yaml --dvc-set)"


@pytest.fixture(scope="session")
def demo_workspace(repo_root, tmp_path_factory):
    """A fresh clone-like copy of the workflow where the demo ran through both engines.

    1. README's DVC command (``dvc exp run $(pneumocxr params ... --dvc-set)``) runs the whole
       demo and writes dvc.lock; params.yaml then holds the demo values;
    2. Snakemake reruns every job on the same params (``--forceall``), recording its own
       provenance; the outputs are byte-identical, so ``dvc status`` stays clean.

    Stage commands run the copy's own library (PYTHONPATH), so editing a module of the copy
    is a real code change. Returns ``(path, env)``.
    """
    import os
    import subprocess

    from test_workflow import BIN, copy_workflow, run

    work = copy_workflow(repo_root, tmp_path_factory.mktemp("demo_workspace"))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(work / "src")}
    # each engine its own resume cache: Snakemake retrains from scratch, so the byte-identical
    # outputs below are two independent computations
    dvc_env = {**env, "PNEUMOCXR_RESUME_DIR": str(work / ".cache/resume-dvc")}
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"]):
        run(cmd, work)
    run([str(BIN / "dvc"), "init", "-q"], work, env=env)
    run(["git", "add", "-A"], work)
    run(["git", "commit", "-qm", "workflow"], work)
    proc = subprocess.run(["bash", "-c", README_DVC_DEMO], cwd=work, env=dvc_env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run([str(BIN / "snakemake"), "--cores", "2", "all", "--forceall"], work, env=env)
    return work, env
