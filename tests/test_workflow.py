"""The workflow machinery: Snakemake/DVC agreement, lint, dry-runs, clear data errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pneumocxr import workflow_sync

BIN = Path(sys.executable).parent
WORKFLOW_FILES = ("Snakefile", "dvc.yaml", "params.yaml", "config", "workflow", "requirements.txt")


def copy_workflow(repo_root: Path, dest: Path) -> Path:
    """The workflow's own files (no data, no results) in a scratch folder."""
    for name in WORKFLOW_FILES:
        src = repo_root / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy2(src, dest / name)
    return dest


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def snakemake(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "snakemake"), "--cores", "2", *args], cwd, check)


def write_overlay(path: Path, overlay: dict) -> Path:
    path.write_text(yaml.safe_dump(overlay))
    return path


def test_dvc_yaml_is_the_one_generated_from_the_snakefile(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    assert workflow_sync.render_dvc_yaml() == (repo_root / "dvc.yaml").read_text(), (
        "dvc.yaml is stale: run `make dvc.yaml` and commit it"
    )


def test_conda_env_is_the_one_generated_from_requirements(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    assert workflow_sync.render_env() == (repo_root / workflow_sync.ENV_FILE).read_text()
    env = yaml.safe_load((repo_root / workflow_sync.ENV_FILE).read_text())
    pins = env["dependencies"][-1]["pip"]
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_every_snakemake_job_has_a_dvc_twin_with_the_same_files_and_params(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    specs, _ = workflow_sync.snakemake_jobs()
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    assert {workflow_sync.stage_name(s) for s in specs} == set(stages)
    for spec in specs:
        stage = stages[workflow_sync.stage_name(spec)]
        plots = {next(iter(p)) if isinstance(p, dict) else p for p in stage.get("plots", [])}
        declared = set(stage.get("outs", [])) | set(stage.get("metrics", [])) | plots
        assert declared == set(spec.output.values()), spec.rule
        assert stage.get("params", []) == spec.params, spec.rule
        assert spec.script in stage["deps"] and Path(spec.script).is_file()
        for paths in spec.input.values():
            for p in paths:
                assert p in stage["deps"] or any(d.startswith("${") for d in stage["deps"]), (spec.rule, p)


def test_stale_dvc_yaml_is_detected(repo_root, monkeypatch, tmp_path, capsys):
    work = copy_workflow(repo_root, tmp_path)
    (work / "dvc.yaml").write_text((work / "dvc.yaml").read_text().replace("--threads", "--thread"))
    monkeypatch.chdir(work)
    assert workflow_sync.main(["--check"]) == 1
    assert "dvc.yaml" in capsys.readouterr().out


def test_snakemake_lint_is_clean(repo_root):
    proc = snakemake("--lint", "--configfile", "config/demo.yaml", cwd=repo_root, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_demo_dry_run_plans_every_stage(repo_root, tmp_path):
    work = copy_workflow(repo_root, tmp_path)
    proc = snakemake("all", "-n", "--configfile", "config/demo.yaml", cwd=work)
    out = proc.stdout + proc.stderr
    for rule in ("make_demo", "prepare"):
        assert rule in out


def test_real_data_dry_run_reads_the_shared_kermany_folder(repo_root, tmp_path, kermany_root):
    work = copy_workflow(repo_root, tmp_path)
    overlay = write_overlay(tmp_path / "real.yaml", {"data": {"root": str(kermany_root)}})
    proc = snakemake("all", "-n", "--configfile", str(overlay), cwd=work)
    out = proc.stdout + proc.stderr
    assert "prepare" in out and "make_demo" not in out


def test_missing_data_folder_fails_at_once_naming_layout_source_and_demo(repo_root, tmp_path):
    work = copy_workflow(repo_root, tmp_path)
    proc = snakemake("all", "-n", cwd=work, check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "data/raw/chest_xray: data folder not found" in err
    assert "paultimothymooney/chest-xray-pneumonia" in err and "10.17632/rscbjbr9sj.2" in err
    assert "make demo" in err
    assert "Traceback (most recent call last)" not in err


def test_invalid_param_stops_snakemake_with_the_key(repo_root, tmp_path):
    work = copy_workflow(repo_root, tmp_path)
    overlay = write_overlay(tmp_path / "bad.yaml", {"prepare": {"crop": 3}})
    proc = snakemake("all", "-n", "--configfile", "config/demo.yaml", str(overlay), cwd=work,
                     check=False)
    assert proc.returncode != 0
    assert "prepare.crop" in proc.stdout + proc.stderr


def test_dvc_dag_reads_the_pipeline(repo_root, tmp_path):
    work = copy_workflow(repo_root, tmp_path)
    run(["git", "init", "-q"], work)
    run([str(BIN / "dvc"), "init", "-q"], work)
    proc = run([str(BIN / "dvc"), "dag", "--md"], work)
    assert "prepare" in proc.stdout and "make_demo" in proc.stdout
