"""End to end: the demo pipeline through DVC (README's command) and Snakemake.

Slow (minutes): conftest's ``demo_workspace`` runs README's ``dvc exp run $(pneumocxr params
--overlay config/demo.yaml --dvc-set)`` on a fresh copy of the workflow, then every job again
with Snakemake on the same params. What reruns after an edit is tests/test_reruns.py.
"""

from __future__ import annotations

import json
import re

import pytest

from conftest import README_DVC_DEMO
from test_workflow import BIN, run

pytestmark = pytest.mark.slow


def test_readme_and_makefile_give_the_dvc_command_the_test_runs(repo_root):
    assert README_DVC_DEMO in (repo_root / "README.md").read_text()
    make = (repo_root / "Makefile").read_text()
    recipe = re.search(r"^dvc-demo:.*\n\t(.*)$", make, re.M).group(1)
    assert recipe.replace("$(BIN)/", "").replace("$$", "$") == README_DVC_DEMO


def test_demo_pipeline_builds_every_target_and_labels_it_synthetic(demo_workspace):
    work, _ = demo_workspace
    summary = json.loads((work / "results/data/summary.json").read_text())
    assert summary["data_source"] == "demo"
    assert (work / "results/data/overview.png").stat().st_size > 10_000
    assert (work / "logs/prepare.log").read_text().strip()
    for name in ("summary.md", "MODEL_CARD.md", "params.json"):
        assert (work / "results" / name).stat().st_size > 100
    params = json.loads((work / "results/params.json").read_text())
    assert params["data"]["source"] == "demo" and "progress" not in params


def test_dvc_metrics_and_experiment_are_recorded(demo_workspace):
    work, env = demo_workspace
    assert "summary.json" in run([str(BIN / "dvc"), "metrics", "show"], work, env=env).stdout
    exps = run([str(BIN / "dvc"), "exp", "show", "--no-pager", "--csv"], work, env=env).stdout
    assert "train.three_class.epochs" in exps


def test_snakemake_reruns_nothing_when_nothing_changed(demo_workspace):
    from test_reruns import smk_planned

    work, env = demo_workspace
    proc = run([str(BIN / "snakemake"), "--cores", "2", "all", "-n"], work, env=env)
    assert smk_planned(proc.stdout + proc.stderr) == set()


def test_training_logs_hold_epochs_and_outputs_hold_no_clock_time(demo_workspace):
    work, _ = demo_workspace
    log = (work / "logs/train/binary/resnet18.log").read_text()
    assert re.search(r"epoch 1/\d+: .* s, [\d.]+ img/s", log)
    history = (work / "results/classify/binary/resnet18/history.csv").read_text()
    assert "seconds" not in history and "images_per_s" not in history


def test_the_demo_second_site_is_evaluated_as_an_external_set(demo_workspace):
    work, _ = demo_workspace
    data = json.loads((work / "results/external/demo_site/data.json").read_text())
    assert data["n_images"] > 0 and data["patients_known"] and data["n_excluded_in_train"] == 0
    m = json.loads((work / "results/external/demo_site/metrics.json").read_text())
    assert set(m["classifiers"]) == {"binary_resnet18", "three_class_resnet18"}
    at = m["classifiers"]["binary_resnet18"]["normal_vs_pneumonia"]["at_operating"]
    assert {"sensitivity", "specificity", "ppv", "npv"} <= set(at)
    assert "anomaly" in m and m["classifiers"]["binary_resnet18"]["knn"] is not None
    summary = (work / "results/summary.md").read_text()
    assert "## External test sets" in summary and "`demo_site`" in summary
    assert "External validation" in (work / "results/MODEL_CARD.md").read_text()


def test_calibrate_fits_a_site_operating_point_that_predict_then_uses(demo_workspace, tmp_path):
    work, env = demo_workspace
    out = tmp_path / "site_calibration.json"
    proc = run([str(BIN / "pneumocxr"), "calibrate", "data/demo/site2", "--models", "results",
                "--n-boot", "50", "--out", str(out)], work, env=env)
    assert "site operating point: threshold" in proc.stdout and "normal and" in proc.stdout
    cal = json.loads(out.read_text())
    assert cal["source"] == "site" and cal["fitted_on"]["n_images"] == 60
    assert cal["ci"]["threshold"]["ci_low"] <= cal["operating_threshold"]["value"] \
        <= cal["ci"]["threshold"]["ci_high"]
    files = sorted((work / "data/demo/site2/NORMAL").iterdir())[:2]
    pred = run([str(BIN / "pneumocxr"), "predict", *map(str, files), "--models", "results",
                "--calibration", str(out), "--out", str(tmp_path / "p.json")], work, env=env)
    rows = json.loads((tmp_path / "p.json").read_text())
    assert "operating point from" in pred.stderr
    threshold = cal["operating_threshold"]["value"]
    assert all(abs(r["threshold"] - threshold) < 1e-12 for r in rows["predictions"])


def test_seed_spread_retrains_on_the_pipelines_arrays_and_logs_each_external_look(
        demo_workspace, repo_root, tmp_path, monkeypatch):
    """bench/seed_spread.py on the demo run: the pipeline's seed joins as one row, each
    retrained seed is scored on the dev test and the external set, and every external score
    is a logged look."""
    import hashlib

    import yaml

    from test_bench_cli import _load

    work, _ = demo_workspace
    monkeypatch.syspath_prepend(str(repo_root / "bench"))
    monkeypatch.setenv("PNEUMOCXR_RESUME_DIR", str(tmp_path / "resume"))
    module = _load("seed_spread")
    looks = tmp_path / "looks.jsonl"
    out = module.main(["--workflow", str(work), "--seeds", "1", "--results", str(work / "results"),
                       "--workdir", str(tmp_path / "w"), "--looks", str(looks),
                       "--out", str(tmp_path / "spread.json")])
    seed = yaml.safe_load((work / "params.yaml").read_text())["seed"]
    assert [r["seed"] for r in out["seeds"]] == [seed, 1]
    shipped = json.loads((work / "results/classify/binary/resnet18/metrics.json").read_text())
    assert out["seeds"][0]["figures"]["dev_test"]["binary_auroc"] == \
        round(shipped["test"]["auroc"]["value"], 4)
    assert (tmp_path / "w/seed1/models/three_class/resnet18/best.pt").is_file()
    logged = [json.loads(line) for line in looks.read_text().splitlines()]
    assert [(e["set"], e["seed"]) for e in logged] == [("demo_site", 1)]
    assert logged[0]["chosen_on"].startswith("nothing")
    assert logged[0]["config_sha256"] == hashlib.sha256(
        (work / "results/params.json").read_bytes()).hexdigest()[:16]   # as the run's own look
    auroc = out["spread"]["demo_site"]["binary_auroc"]
    assert auroc["n"] == 2 and auroc["min"] <= auroc["mean"] <= auroc["max"]
    assert json.loads((tmp_path / "spread.json").read_text())["spread"] == out["spread"]


def test_the_joint_head_runs_the_binary_stages_on_the_folded_network(repo_root, tmp_path):
    """train.joint_head on the demo: one three-class network, no binary training; the binary
    stages (calibrate, evaluate, embed, explain) read its fold as any binary model."""
    import os

    from test_workflow import copy_workflow, write_overlay

    work = tmp_path / "joint"
    work.mkdir()
    copy_workflow(repo_root, work)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(work / "src"),
           "PNEUMOCXR_RESUME_DIR": str(work / ".cache/resume")}
    joint = write_overlay(tmp_path / "joint.yaml", {"train": {"joint_head": True}})
    targets = ["results/classify/binary/resnet18/metrics.json",
               "results/classify/three_class/resnet18/metrics.json",
               "results/embed/binary/resnet18/metrics.json",
               "results/explain/binary/resnet18/metrics.json"]
    run([str(BIN / "snakemake"), "--cores", "2", *targets, "--configfile", "config/demo.yaml",
         str(joint)], work, env=env)
    assert not (work / "logs/train/binary").exists()
    assert "folded" in (work / "logs/fold_binary/resnet18.log").read_text()
    binary = json.loads((work / targets[0]).read_text())
    three = json.loads((work / targets[1]).read_text())
    assert binary["folded_from"] == "results/models/three_class/resnet18/best.pt"
    assert three["folded_from"] is None and three["weights"] == "none"
    # the folded model's logit margin is log(p(bacteria) + p(virus)) - log p(normal)
    import numpy as np
    import pandas as pd

    b = pd.read_csv(work / "results/classify/binary/resnet18/predictions.csv")
    t = pd.read_csv(work / "results/classify/three_class/resnet18/predictions.csv")
    assert list(b["file"]) == list(t["file"])
    assert (b["label"] == (t["label"] > 0)).all()
    margin = np.logaddexp(t["logit_bacteria"], t["logit_virus"]) - t["logit_normal"]
    np.testing.assert_allclose(b["logit_pneumonia"] - b["logit_normal"], margin, atol=0.05)
    assert binary["test"]["auroc"]["value"] > 0.5
