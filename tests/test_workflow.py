"""The workflow machinery: Snakemake/DVC agreement, narrow params, code deps, lint, dry-runs,
clear data and params errors at start-up."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pneumocxr import workflow_sync
from pneumocxr.codedeps import code_deps
from pneumocxr.config import flatten, load_params, schema

BIN = Path(sys.executable).parent
WORKFLOW_FILES = ("Snakefile", "dvc.yaml", "params.yaml", "config", "workflow", "requirements.txt",
                  "src", ".dvcignore")


def copy_workflow(repo_root: Path, dest: Path) -> Path:
    """The workflow's own files and the library sources (no data, no results) in a scratch
    folder: the rules take src/pneumocxr modules as inputs."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in WORKFLOW_FILES:
        src = repo_root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def snakemake(*args: str, cwd: Path, check: bool = True, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    return run([str(BIN / "snakemake"), "--cores", "2", *args], cwd, check, env)


def write_overlay(path: Path, overlay: dict) -> Path:
    path.write_text(yaml.safe_dump(overlay))
    return path


def dvc_stages(repo_root: Path) -> dict:
    return yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]


def test_generated_files_are_current(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    for path, text in workflow_sync.generated_files().items():
        assert text == (repo_root / path).read_text(), (
            f"{path} is stale: run `make dvc.yaml` and commit it")


def test_conda_env_has_the_pins_and_a_post_deploy_script_that_installs_the_project(repo_root):
    env = yaml.safe_load((repo_root / workflow_sync.ENV_FILE).read_text())
    pins = env["dependencies"][-1]["pip"]
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    post = repo_root / "workflow/envs/pneumocxr.post-deploy.sh"   # Snakemake runs it after
    text = post.read_text()                                      # creating the env
    assert text.startswith("#!/usr/bin/env bash") and "pip install --no-deps -e ." in text
    assert post.stat().st_mode & 0o111


def test_every_snakemake_job_has_a_dvc_twin_with_the_same_files_params_and_code(repo_root,
                                                                                monkeypatch):
    monkeypatch.chdir(repo_root)
    specs, config = workflow_sync.snakemake_jobs()
    stages = dvc_stages(repo_root)
    assert {workflow_sync.stage_name(s) for s in specs} == set(stages)
    sentinel = workflow_sync.SENTINEL_SET

    def per_set(text: str) -> str:     # a per-external-set job, as DVC's foreach writes it
        return text.replace(sentinel, "${key}")

    for spec in specs:
        stage = stages[workflow_sync.stage_name(spec)]
        each = "set" in spec.wildcards
        if each:
            assert stage["foreach"] == "${external}"
            stage = stage["do"]
        plots = {next(iter(p)) if isinstance(p, dict) else p for p in stage.get("plots", [])}
        declared = set(stage.get("outs", [])) | set(stage.get("metrics", [])) | plots
        assert declared == {per_set(o) for o in spec.output.values()}, spec.rule
        keys = workflow_sync.params_keys(spec.params, config)
        if each:
            keys = [f"external.{sentinel}" if k == "external" else k for k in keys]
        assert [next(iter(k)) if isinstance(k, dict) else k for k in stage.get("params", [])] \
            == [per_set("params.yaml" if k == "all" else k) for k in keys], spec.rule
        assert spec.script in stage["deps"] and Path(spec.script).is_file()
        code = code_deps(spec.script)
        assert spec.input["code"] == code and set(code) <= set(stage["deps"]), spec.rule
        for paths in spec.input.values():
            for p in paths:
                p = per_set(p)
                assert p in stage["deps"] or any(d.startswith("${") for d in stage["deps"]) \
                    or any(p.startswith(d + "/") for d in stage["deps"]), (spec.rule, p)


def test_each_stage_depends_on_exactly_the_keys_its_step_reads(repo_root):
    params = {name: [next(iter(k)) if isinstance(k, dict) else k for k in st.get("params", [])]
              for name, st in dvc_stages(repo_root).items()}
    recipe = {f"train.{k}" for k in schema()["properties"]["train"]["properties"]
              if k not in ("archs", "weights", "joint_head", "binary", "three_class", "per_arch")}
    own = {"train.per_arch.resnet18"}      # its architecture's block, not the others'
    assert set(params["train_binary_resnet18"]) == {"seed", "device", "train.weights",
                                                    "train.binary"} | recipe | own
    assert set(params["train_three_class_resnet18"]) == {"seed", "device",
                                                         "train.three_class"} | recipe | own
    assert params["calibrate_binary_resnet18"] == ["calibrate"]
    assert set(params["train_autoencoder"]) == {"anomaly.model", "anomaly.train", "seed", "device"}
    assert set(params["evaluate_anomaly"]) == {"anomaly.score", "anomaly.evaluate", "seed", "device"}
    assert set(params["embed_binary_resnet18"]) == {"embed.batch_size", "embed.channels_last",
                                                    "device"}
    assert set(params["tsne_knn_binary_resnet18"]) == {"embed.tsne", "embed.knn",
                                                       "embed.bootstrap", "seed"}
    assert set(params["prepare"]) == {"data", "prepare"}           # not the training seed
    assert params["check_params"] == ["params.yaml"]               # every key
    # display only: the top-level progress key (train.progressive_* are recipe keys)
    assert not any(k == "progress" or k.endswith(".progress") for ps in params.values() for k in ps)
    assert "train.progressive_scale" in params["train_binary_resnet18"]


def test_each_architecture_trains_with_its_own_overrides_and_tracks_no_other(repo_root,
                                                                             tmp_path, monkeypatch):
    """With two architectures, each training job is given train.per_arch of its own
    architecture only: editing AlexNet's learning rate cannot rerun ResNet-18."""
    from pneumocxr.settings import TrainSettings

    monkeypatch.chdir(repo_root)
    params = load_params(repo_root / "params.yaml")
    params["train"]["archs"] = ["resnet18", "alexnet"]
    params["train"]["per_arch"]["alexnet"] = {"lr": 3e-4, "epochs": 2}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    specs, _ = workflow_sync.snakemake_jobs(params_file=path)
    trains = {(s.wildcards["task"], s.wildcards["arch"]): s.params["train"]
              for s in specs if s.rule.startswith("train_") and "arch" in s.wildcards}
    assert len(trains) == 4
    for (task, arch), given in trains.items():
        assert set(given["per_arch"]) == {arch}, (task, arch)
        recipe = TrainSettings.for_task(given, task, arch)
        if arch == "alexnet":
            assert (recipe.lr, recipe.epochs) == (3e-4, 2)   # over the task's own lr too
        else:
            assert recipe.lr == (params["train"]["lr"] if task == "binary"
                                 else params["train"]["three_class"]["lr"])
            assert recipe.epochs != 2


def test_every_key_a_dvc_stage_tracks_is_written_in_params_yaml(repo_root):
    """DVC reads params.yaml itself (no schema defaults): each tracked key must be there."""
    written = yaml.safe_load((repo_root / "params.yaml").read_text())
    flat = flatten(written)
    for name, stage in dvc_stages(repo_root).items():
        for key in stage.get("params", []):
            if isinstance(key, dict):
                continue
            assert key in written or key in flat or any(k.startswith(key + ".") for k in flat), \
                (name, key)


@pytest.mark.parametrize("script", sorted(p.name for p in Path(__file__).resolve().parents[1]
                                          .joinpath("workflow/scripts").glob("*.py")))
def test_code_deps_cover_every_module_the_script_imports(repo_root, monkeypatch, script):
    """The static import closure holds every pneumocxr module that importing the script's
    library entry point actually loads (run in a fresh interpreter)."""
    monkeypatch.chdir(repo_root)
    deps = set(code_deps(f"workflow/scripts/{script}"))
    tree = __import__("ast").parse((repo_root / "workflow/scripts" / script).read_text())
    mods = [n.module for n in tree.body if isinstance(n, __import__("ast").ImportFrom)]
    code = ("import sys, importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
            + "print('\\n'.join(sorted(getattr(m, '__file__', '') or '' for n, m in "
            "sys.modules.items() if n.split('.')[0] == 'pneumocxr')))")
    loaded = run([sys.executable, "-c", code], repo_root).stdout.split()
    loaded = {str(Path(f).resolve().relative_to(repo_root)) for f in loaded if f}
    assert loaded <= deps, sorted(loaded - deps)


def test_code_deps_follow_relative_and_function_level_imports(tmp_path):
    pkg = tmp_path / "src/pneumocxr"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub/__init__.py").write_text("")
    (pkg / "sub/b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from . import d\n")
    (pkg / "d.py").write_text("")
    (pkg / "e.py").write_text("")
    script = tmp_path / "s.py"
    script.write_text("from pneumocxr.a import x\n")
    deps = code_deps(script, pkg)
    names = {str(Path(d).relative_to(pkg)) for d in deps}
    assert names == {"__init__.py", "a.py", "sub/__init__.py", "sub/b.py", "c.py"}


def test_code_table_counts_the_stages_of_each_module(repo_root):
    table = (repo_root / workflow_sync.CODE_TABLE).read_text()
    row = next(line for line in table.splitlines() if line.startswith("| `src/pneumocxr/knn.py`"))
    assert row.split("|")[2].strip() == "3"     # tsne_knn of both tasks, evaluate_external
    row = next(line for line in table.splitlines()
               if line.startswith("| `src/pneumocxr/calibration.py`"))
    assert "train_" not in row                       # a threshold rule retrains nothing


def test_stale_dvc_yaml_is_detected(repo_root, monkeypatch, tmp_path, capsys):
    work = copy_workflow(repo_root, tmp_path)
    (work / "docs").mkdir()
    shutil.copy2(repo_root / workflow_sync.CODE_TABLE, work / workflow_sync.CODE_TABLE)
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
    for rule in ("make_demo", "prepare", "check_params", "calibrate"):
        assert rule in out


def _dag(out: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """``snakemake --dag`` output -> (job id -> rule name, edges as (from rule, to rule))."""
    import re

    names = {m[0]: m[1] for m in re.findall(r'^\s*(\d+)\[label = "([a-z_0-9]+)', out, re.M)}
    edges = {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", out, re.M)}
    return names, edges


def test_the_joint_head_trains_one_network_and_folds_it_into_the_binary_model(repo_root,
                                                                           tmp_path):
    work = copy_workflow(repo_root, tmp_path)
    joint = write_overlay(tmp_path / "joint.yaml", {"train": {"joint_head": True}})
    names, edges = _dag(snakemake("--dag", "--configfile", "config/demo.yaml", str(joint),
                                  cwd=work).stdout)
    rules = set(names.values())
    assert "fold_binary" in rules and "train_three_class" in rules
    assert "train_binary" not in rules
    # the three-class network starts from train.weights, not from a binary model
    assert {a for a, b in edges if b == "train_three_class"} == {"prepare"}
    assert {("train_three_class", "fold_binary"), ("fold_binary", "calibrate"),
            ("fold_binary", "embed"), ("fold_binary", "explain")} <= edges
    _, edges = _dag(snakemake("--dag", "--configfile", "config/demo.yaml", cwd=work).stdout)
    assert ("train_binary", "train_three_class") in edges


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


#: one typo or bad value in each params section, and what the error must name
BAD_PARAMS = [
    ({"sed": 1}, "sed: unknown key"),
    ({"device": "gpu"}, "device: 'gpu' is not allowed"),
    ({"data": {"val_fracton": 0.2}}, "data.val_fracton: unknown key"),
    ({"demo": {"size": 8}}, "demo.size: 8 is less than the minimum of 64"),
    ({"prepare": {"crop": 3}}, "prepare.crop: 3 is less than the minimum of 16"),
    ({"train": {"epocs": 3}}, "train.epocs: unknown key"),
    ({"train": {"three_class": {"lr": 0}}}, "train.three_class.lr: 0 is less than or equal"),
    ({"train": {"3class": {"epochs": 2}}}, "train.3class: renamed; use train.three_class"),
    ({"calibrate": {"rule": "f1"}}, "calibrate.rule: 'f1' is not allowed"),
    ({"evaluate": {"splits": ["test", "val_official"]}}, "evaluate.splits must include val"),
    ({"embed": {"tsne": {"perplexty": 5}}}, "embed.tsne.perplexty: unknown key"),
    ({"anomaly": {"score": {"methd": "ssim"}}}, "anomaly.score.methd: unknown key"),
    ({"anomaly": {"model": {"input_size": 100}}}, "must be divisible by"),
    ({"explain": {"occlusion": {"windw": 8}}}, "explain.occlusion.windw: unknown key"),
]


@pytest.mark.parametrize("overlay,message", BAD_PARAMS, ids=[m.split(":")[0] for _, m in BAD_PARAMS])
def test_bad_params_stop_snakemake_at_start_up_naming_the_key(repo_root, tmp_path, overlay, message):
    work = copy_workflow(repo_root, tmp_path)
    bad = write_overlay(tmp_path / "bad.yaml", overlay)
    proc = snakemake("all", "-n", "--configfile", "config/demo.yaml", str(bad), cwd=work,
                     check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out, out
    assert "Traceback" not in out


def test_bad_params_stop_the_dvc_route_before_the_step_naming_the_key(repo_root, tmp_path):
    from pneumocxr.stage import stage_io

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    for overlay, message in BAD_PARAMS:
        bad = yaml.safe_load(yaml.safe_dump(params))
        for key, value in overlay.items():
            if isinstance(value, dict) and isinstance(bad.get(key), dict):
                bad[key] = {**bad[key], **value}
            else:
                bad[key] = value
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(SystemExit) as err:
            stage_io({}, ["--rule", "check_params", "--params-file", str(path), "--params", "all"])
        assert message in str(err.value), (overlay, err.value)


def test_the_dvc_route_refuses_params_that_change_which_stages_exist(repo_root, tmp_path):
    from pneumocxr.stage import stage_io

    params = load_params(repo_root / "params.yaml")
    params["train"]["archs"] = ["resnet18", "vgg16"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as err:
        stage_io({}, ["--rule", "check_params", "--params-file", str(path), "--params", "all",
                      "--dag", "archs=resnet18", "tasks=binary,three_class"])
    msg = str(err.value)
    assert "archs: dvc.yaml has stages for ['resnet18']" in msg and "vgg16" in msg
    assert "make dvc.yaml" in msg
    params["train"]["archs"] = ["resnet18"]
    params["data"]["source"] = "medmnist"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match="tasks: dvc.yaml has stages for"):
        stage_io({}, ["--rule", "check_params", "--params-file", str(path), "--params", "all",
                      "--dag", "archs=resnet18", "tasks=binary,three_class"])


def test_the_dvc_route_hands_the_step_exactly_the_keys_it_lists(repo_root):
    from pneumocxr.stage import stage_io

    io = stage_io({}, ["--rule", "embed", "--params-file", str(repo_root / "params.yaml"),
                       "--params", "embed.batch_size", "device", "--wildcards", "task=binary",
                       "arch=resnet18", "--input", "model=m.pt", "--output", "embeddings=e.npz"])
    assert io.params == {"embed": {"batch_size": 64}, "device": "auto"}
    assert io.wildcards == {"task": "binary", "arch": "resnet18"}
    assert io.input == {"model": "m.pt"} and io.output == {"embeddings": "e.npz"}


def test_dvc_set_flags_of_an_overlay_survive_the_shell(repo_root):
    """`dvc exp run $(pneumocxr params --overlay X --dvc-set)`: the words after the shell's
    split are -S and key=value pairs, with no key DVC cannot address."""
    out = run([str(BIN / "pneumocxr"), "params", "--overlay", "config/demo.yaml", "--dvc-set"],
              repo_root).stdout
    words = out.split()
    assert words[::2] == ["-S"] * (len(words) // 2)
    pairs = dict(w.split("=", 1) for w in words[1::2])
    assert pairs["anomaly.model.channels"] == "[16,32,64]"
    assert pairs["train.three_class.epochs"] == "4"
    assert not any(k.split(".")[-1][0].isdigit() or any(p[0].isdigit() for p in k.split("."))
                   for k in pairs)


def test_dvc_dag_reads_the_pipeline(repo_root, tmp_path):
    work = copy_workflow(repo_root, tmp_path)
    run(["git", "init", "-q"], work)
    run([str(BIN / "dvc"), "init", "-q"], work)
    proc = run([str(BIN / "dvc"), "dag", "--md"], work)
    assert "prepare" in proc.stdout and "make_demo" in proc.stdout and "calibrate" in proc.stdout


def test_stage_logs_summarise_long_input_lists(tmp_path, caplog):
    from pneumocxr.stage import StageIO

    files = [f"data/raw/chest_xray/train/NORMAL/{i}.jpeg" for i in range(5000)]
    io = StageIO(rule="prepare", input={"raw": files}, log=str(tmp_path / "p.log"))
    with io.logging():
        pass
    first = (tmp_path / "p.log").read_text().splitlines()
    assert any("input raw: 5000 files under data/raw/chest_xray/train/NORMAL" in ln for ln in first)
    assert max(len(ln) for ln in first) < 300


def test_stage_reports_user_errors_in_one_line_and_keeps_tracebacks_of_others(tmp_path):
    from pneumocxr.errors import InputError
    from pneumocxr.stage import StageIO

    log = tmp_path / "x.log"
    with pytest.raises(SystemExit):
        with StageIO(rule="x", log=str(log)).logging():
            raise InputError("params.yaml: train.lr must be > 0")
    text = log.read_text()
    assert "ERROR pneumocxr.x: params.yaml: train.lr must be > 0" in text
    assert "Traceback" not in text
    with pytest.raises(RuntimeError):     # e.g. a shape mismatch inside torch
        with StageIO(rule="x", log=str(log)).logging():
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "mat1 and mat2" in text


def test_schema_ships_inside_the_package():
    importlib.import_module("pneumocxr.config")
    from importlib import resources

    text = resources.files("pneumocxr").joinpath("params.schema.yaml").read_text()
    assert "additionalProperties: false" in text
    assert resources.files("pneumocxr").joinpath("py.typed").is_file()
