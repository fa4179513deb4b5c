"""Evaluation: calibration, thresholds, metrics against sklearn, outputs and the stage scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import (accuracy_score, confusion_matrix, precision_recall_fscore_support,
                             roc_auc_score)

from pneumocxr.calibration import (CALIBRATION_FORMAT, choose_threshold,
                                   expected_calibration_error, fit_temperature, load_calibration,
                                   nll, reliability_bins, run_calibration)
from pneumocxr.compare import compare_models
from pneumocxr.config import dag_structure, load_params
from pneumocxr.datasets import load_task_split
from pneumocxr.evaluate import evaluate_checkpoint, run_evaluation, split_metrics
from pneumocxr.logits import probabilities
from pneumocxr.metrics import binary_rates, bootstrap_ci, bootstrap_cis, youden_threshold
from pneumocxr.settings import CalibrateSettings, TrainSettings
from pneumocxr.stage import format_structure
from pneumocxr.train import fit
from pneumocxr.utils import write_json

from test_train import FAST, TINY, write_processed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_ece_is_zero_when_confidence_matches_accuracy_and_the_gap_otherwise():
    # 10 predictions at confidence 0.9, 9 correct -> calibrated
    probs = np.tile([0.1, 0.9], (10, 1))
    labels = np.array([1] * 9 + [0])
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(0.0, abs=1e-12)
    # only 5 correct -> |0.5 - 0.9| = 0.4
    labels = np.array([1] * 5 + [0] * 5)
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(0.4)
    bins = reliability_bins(probs, labels, 10)
    assert bins["count"].sum() == 10 and len(bins) == 10


def test_temperature_scaling_recovers_a_known_temperature_and_lowers_nll():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 3))
    true_t = 2.0
    p = probabilities(logits, true_t)
    labels = np.array([rng.choice(3, p=row) for row in p])
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    assert nll(logits, labels, t) < nll(logits, labels, 1.0)
    assert (expected_calibration_error(probabilities(logits, t), labels)
            < expected_calibration_error(probabilities(logits), labels))


def test_youden_rule_matches_the_shared_metric_and_sensitivity_rule_reaches_its_target():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    score = np.clip(0.5 * y + rng.normal(0.25, 0.25, 300), 0, 1)
    t = choose_threshold(y, score, "youden")
    assert t["value"] == youden_threshold(y, score)["threshold"]
    s = choose_threshold(y, score, "sensitivity", target_sensitivity=0.95)
    assert s["val_sensitivity"] >= 0.95
    assert s["value"] <= t["value"] or s["val_sensitivity"] >= t["val_sensitivity"]
    with pytest.raises(ValueError, match="threshold rule must be one of"):
        choose_threshold(y, score, "test_set")
    with pytest.raises(ValueError, match="normal and pneumonia"):
        choose_threshold(np.ones(5), np.linspace(0, 1, 5))


def test_bootstrap_cis_uses_the_same_patient_replicates_as_bootstrap_ci():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 80)
    pred = np.where(rng.random(80) < 0.8, y, 1 - y)
    groups = np.repeat(np.arange(20), 4)
    one = bootstrap_ci(lambda a, b: float(np.mean(a == b)), [y, pred], groups, n_boot=200, seed=3)
    many = bootstrap_cis(lambda a, b: {"acc": float(np.mean(a == b)), "nan": float("nan")},
                         [y, pred], groups, n_boot=200, seed=3)
    for key in ("value", "ci_low", "ci_high", "n_valid"):
        assert many["acc"][key] == pytest.approx(one[key])
    assert many["nan"]["n_valid"] == 0 and np.isnan(many["nan"]["ci_low"])


def test_split_metrics_agree_with_sklearn_and_cis_widen_when_images_share_patients():
    rng = np.random.default_rng(4)
    n = 120
    # 12 patients x 10 copies of one image: the copies are not independent evidence
    y = np.repeat(rng.integers(0, 3, n // 10), 10)
    logits = np.repeat(rng.normal(0, 1, (n // 10, 3)), 10, axis=0)
    logits[np.arange(n), y] += 1.0
    names = ["normal", "bacteria", "virus"]
    per_image = split_metrics(logits, y, np.arange(n), names, n_boot=200)
    pred = logits.argmax(1)
    assert per_image["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=[0, 1, 2])
    for i, name in enumerate(names):
        assert per_image["per_class"][name]["precision"]["value"] == pytest.approx(prec[i])
        assert per_image["per_class"][name]["recall"]["value"] == pytest.approx(rec[i])
        assert per_image["per_class"][name]["f1"]["value"] == pytest.approx(f1[i])
    assert per_image["auroc"]["value"] == pytest.approx(
        roc_auc_score(y, probabilities(logits), multi_class="ovr"))
    acc = per_image["accuracy"]
    assert acc["ci_low"] < acc["value"] < acc["ci_high"]
    # resampling patients (10 images each) gives the honest, wider interval
    grouped = split_metrics(logits, y, np.arange(n) // 10, names, n_boot=200)
    assert (grouped["accuracy"]["ci_high"] - grouped["accuracy"]["ci_low"]
            > acc["ci_high"] - acc["ci_low"])
    # 3-class predictions folded into normal vs pneumonia
    cm = confusion_matrix(y, pred, labels=[0, 1, 2])
    assert all(per_image["confusion"][t][p] == cm[i, j] for i, t in enumerate(names)
               for j, p in enumerate(names))
    y_bin, s_bin = (y > 0).astype(int), (pred > 0).astype(int)
    rates = binary_rates(y_bin, (1 - probabilities(logits)[:, 0] >= 0.5).astype(int))
    assert per_image["at_half"]["sensitivity"]["value"] == pytest.approx(rates["sensitivity"])
    assert per_image["at_half"]["specificity"]["value"] == pytest.approx(rates["specificity"])
    folded = per_image["folded"]["confusion"]
    assert folded["normal"]["normal"] == int(((y == 0) & (pred == 0)).sum())
    assert folded["pneumonia"]["pneumonia"] == int(((y_bin == 1) & (s_bin == 1)).sum())
    assert sum(v for row in folded.values() for v in row.values()) == n


def test_binary_rates_at_half_do_not_depend_on_the_temperature():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 60)
    logits = rng.normal(0, 2, (60, 2))
    a = split_metrics(logits, y, np.arange(60), ["normal", "pneumonia"], temperature=1.0, n_boot=20)
    b = split_metrics(logits, y, np.arange(60), ["normal", "pneumonia"], temperature=3.0, n_boot=20)
    for m in ("sensitivity", "specificity"):
        assert a["at_half"][m]["value"] == b["at_half"][m]["value"]
    assert a["auroc"]["value"] == pytest.approx(b["auroc"]["value"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny processed folder with binary and 3-class resnet18 checkpoints (1 epoch each),
    each calibrated on its val predictions (``calibration.json`` beside ``best.pt``)."""
    root = tmp_path_factory.mktemp("eval")
    processed = write_processed(root / "processed", TINY)
    paths = {}
    init = "none"
    for task in ("binary", "three_class"):
        (train, src), (val, _) = (load_task_split(processed, s, task) for s in ("train", "val"))
        out = root / "models" / task / "resnet18"
        fit(train, val, arch="resnet18", task=task,
            params=TrainSettings.for_task({**FAST, "epochs": 1}, task),
            model_path=out / "best.pt", history_path=out / "history.csv",
            val_predictions_path=out / "val_predictions.csv", data_source=src,
            init=init, resume=False, resume_root=root / "resume")
        run_calibration(out / "val_predictions.csv", out / "calibration.json")
        paths[task] = out
        init = out / "best.pt"
    return processed, paths


def _outputs(out: Path, task: str) -> dict[str, Path]:
    names = {"metrics": "metrics.json", "predictions": "predictions.csv",
             "confusion": "confusion.png", "roc": "roc.png", "reliability": "reliability.png",
             "curves": "curves.png"}
    if task == "three_class":
        names["folded"] = "confusion_folded.png"
    return {k: out / v for k, v in names.items()}


@pytest.mark.parametrize("task", ["binary", "three_class"])
def test_run_evaluation_writes_metrics_predictions_and_figures(trained, tmp_path, task):
    processed, paths = trained
    outputs = _outputs(tmp_path, task)
    calibration = load_calibration(paths[task] / "calibration.json")
    metrics = run_evaluation(paths[task] / "best.pt", processed, outputs, task=task,
                             calibration=paths[task] / "calibration.json",
                             history_path=paths[task] / "history.csv",
                             params={"n_boot": 20}, seed=0)
    assert metrics["temperature"] == calibration["temperature"]
    assert metrics["operating_threshold"] == calibration["operating_threshold"]
    for path in outputs.values():
        assert path.is_file() and path.stat().st_size > 0, path
    saved = json.loads(outputs["metrics"].read_text())
    assert saved["data_source"] == "kermany" and saved["task"] == task
    assert {"val", "test", "val_official", "threshold_transfer"} <= set(saved)
    test = saved["test"]
    assert test["n_images"] == sum(TINY["test"].values())
    assert set(test["calibration"]) >= {"ece_before", "ece_after"}
    assert test["at_operating"]["threshold"] == metrics["operating_threshold"]["value"] \
        == calibration["operating_threshold"]["value"]
    assert ("folded" in test) == (task == "three_class")
    preds = pd.read_csv(outputs["predictions"])
    assert set(preds["split"]) == {"val", "test", "val_official"}
    assert np.allclose(preds.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)


def test_evaluation_refuses_a_checkpoint_of_another_task_or_a_folded_binary_figure(trained, tmp_path):
    processed, paths = trained
    with pytest.raises(ValueError, match="differ from the task"):
        run_evaluation(paths["three_class"] / "best.pt", processed, {"metrics": tmp_path / "m.json"},
                       task="binary")
    with pytest.raises(ValueError, match="only exists for task three_class"):
        run_evaluation(paths["binary"] / "best.pt", processed, {"folded": tmp_path / "f.png"},
                       task="binary")
    with pytest.raises(ValueError, match=r"evaluate\.n_bootstrap: unknown key"):
        run_evaluation(paths["binary"] / "best.pt", processed, {}, task="binary",
                       params={"n_bootstrap": 10})
    with pytest.raises(ValueError, match="unknown evaluate outputs"):
        run_evaluation(paths["binary"] / "best.pt", processed, {"metricz": tmp_path / "m.json"},
                       task="binary")


def test_evaluation_without_calibration_uses_temperature_1_and_threshold_half(trained):
    processed, paths = trained
    settings = {"n_boot": 10, "splits": ["val", "test"]}
    metrics, preds = evaluate_checkpoint(paths["binary"] / "best.pt", processed, task="binary",
                                         settings=settings)
    assert metrics["temperature"] == 1.0 and metrics["operating_threshold"]["value"] == 0.5
    assert metrics["test"]["at_operating"]["threshold"] == 0.5
    assert (preds["pred_operating"] == (preds["pneumonia_score"] >= 0.5)).all()
    # a calibration given as its content, not its file, is read the same
    cal = load_calibration(paths["binary"] / "calibration.json")
    by_path, _ = evaluate_checkpoint(paths["binary"] / "best.pt", processed, task="binary",
                                     calibration=paths["binary"] / "calibration.json",
                                     settings=settings)
    by_dict, _ = evaluate_checkpoint(paths["binary"] / "best.pt", processed, task="binary",
                                     calibration=cal, settings=settings)
    assert by_path == by_dict and by_path["temperature"] == cal["temperature"]


def test_calibration_json_records_its_fit_and_a_file_of_another_format_is_refused(trained,
                                                                                  tmp_path):
    processed, paths = trained
    cal = load_calibration(paths["three_class"] / "calibration.json")
    assert cal["format"] == CALIBRATION_FORMAT and cal["temperature"] > 0
    # no params: the schema's default rule, the one params.yaml ships
    shipped = load_params(Path(__file__).parents[1] / "params.yaml")["calibrate"]["rule"]
    assert cal["operating_threshold"]["rule"] == CalibrateSettings.from_params(None).rule == shipped
    assert cal["fitted_on"]["split"] == "val"
    assert cal["fitted_on"]["n_images"] == sum(TINY["val"].values())
    assert cal["fitted_on"]["class_counts"] == TINY["val"]
    # the sensitivity rule of params calibrate
    sens = run_calibration(paths["binary"] / "val_predictions.csv", tmp_path / "s.json",
                           {"rule": "sensitivity", "target_sensitivity": 0.9})
    assert sens["operating_threshold"]["rule"] == "sensitivity"
    assert sens["operating_threshold"]["val_sensitivity"] >= 0.9
    write_json({"temperature": 1.0, "operating_threshold": {"value": 0.5}}, tmp_path / "old.json")
    with pytest.raises(ValueError, match="not a calibration file of format"):
        load_calibration(tmp_path / "old.json")
    with pytest.raises(FileNotFoundError, match="run the calibrate stage"):
        load_calibration(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"calibrate\.rule: 'test' is not allowed"):
        run_calibration(paths["binary"] / "val_predictions.csv", tmp_path / "x.json",
                        {"rule": "test"})


def test_compare_models_labels_bars_with_size_and_weights(trained, tmp_path):
    processed, paths = trained
    files = []
    for task in ("binary", "three_class"):
        out = tmp_path / task
        run_evaluation(paths[task] / "best.pt", processed, {"metrics": out / "metrics.json"},
                       task=task, calibration=paths[task] / "calibration.json",
                       params={"n_boot": 20, "splits": ["val", "test"]})
        files.append(out / "metrics.json")
    table = compare_models(files, tmp_path / "cmp.png", tmp_path / "cmp.csv")
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert set(table["task"]) == {"binary", "three_class"}
    assert set(table["model"]) == {"resnet18 (32 px, from scratch)", "resnet18 (32 px, from binary)"}
    assert pd.read_csv(tmp_path / "cmp.csv").shape[0] == 8
    with pytest.raises(FileNotFoundError, match="run the evaluate stage"):
        compare_models([tmp_path / "nope.json"], tmp_path / "x.png")


def _metrics_file(path: Path, arch: str, test_auroc: float, val_auroc: tuple) -> Path:
    """A hand-made metrics.json with the keys the comparison reads."""
    ci = lambda v: {"value": v, "ci_low": v - 0.02, "ci_high": min(v + 0.02, 1.0)}  # noqa: E731
    split = {"accuracy": ci(0.8), "auroc": ci(test_auroc),
             "at_operating": {"sensitivity": ci(0.9), "specificity": ci(0.7)}}
    write_json({"task": "binary", "arch": arch, "input_size": 64, "weights": "none",
                "data_source": "kermany", "test": split,
                "val": {"auroc": dict(zip(("value", "ci_low", "ci_high"), val_auroc))}}, path)
    return path


def test_compare_models_marks_a_model_at_chance_on_val_and_ranks_only_the_others(tmp_path):
    files = [_metrics_file(tmp_path / "a.json", "resnet18", 0.95, (0.97, 0.95, 0.99)),
             _metrics_file(tmp_path / "b.json", "vgg16", 0.97, (0.52, 0.45, 0.60)),
             _metrics_file(tmp_path / "c.json", "alexnet", 0.96, (0.90, 0.85, 0.94))]
    table = compare_models(files, tmp_path / "cmp.png", tmp_path / "cmp.csv")
    by = table[table["metric"] == "auroc"].set_index("arch")
    # vgg16 has the best test AUROC, but its val AUROC CI reaches chance: marked, not ranked
    assert by["converged"].to_dict() == {"resnet18": True, "vgg16": False, "alexnet": True}
    assert by.loc["alexnet", "rank"] == 1 and by.loc["resnet18", "rank"] == 2
    assert pd.isna(by.loc["vgg16", "rank"])
    assert (tmp_path / "cmp.png").stat().st_size > 0
    saved = pd.read_csv(tmp_path / "cmp.csv")
    assert {"val_auroc", "converged", "rank"} <= set(saved.columns)
    bad = json.loads((tmp_path / "a.json").read_text())
    del bad["val"]
    write_json(bad, tmp_path / "noval.json")
    with pytest.raises(ValueError, match=r"noval\.json: no 'val' section"):
        compare_models([tmp_path / "noval.json"], tmp_path / "x.png")


@pytest.mark.slow
def test_train_and_evaluate_scripts_run_through_the_dvc_command_line(tmp_path):
    processed = write_processed(tmp_path / "processed", TINY)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"] = {**FAST, "epochs": 1}
    params["evaluate"] = {"n_boot": 20}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PNEUMOCXR_RESUME_DIR": str(tmp_path / "resume"),
           "OMP_NUM_THREADS": "1"}
    model = tmp_path / "models" / "binary" / "resnet18" / "best.pt"
    calibration = model.parent / "calibration.json"
    hist = tmp_path / "results" / "history.csv"
    val_pred = tmp_path / "results" / "val_predictions.csv"
    # as dvc.yaml runs them: the stage-defining params each command was generated for
    dag = format_structure(dag_structure(load_params(tmp_path / "params.yaml")))
    common = ["--params-file", str(tmp_path / "params.yaml"), "--threads", "1", "--dag", *dag]
    binary = ["--wildcards", "task=binary", "arch=resnet18"]
    subprocess.run([sys.executable, "workflow/scripts/train.py", "--rule", "train_binary",
                    *binary, "--input", f"processed={processed}", "--output", f"model={model}",
                    f"history={hist}", f"val_predictions={val_pred}",
                    "--log", str(tmp_path / "train.log"),
                    "--params", "train", "seed", "device", *common],
                   cwd=REPO, env=env, check=True, capture_output=True)
    assert model.is_file() and hist.is_file() and val_pred.is_file()
    subprocess.run([sys.executable, "workflow/scripts/calibrate.py", "--rule", "calibrate",
                    *binary, "--input", f"predictions={val_pred}",
                    "--output", f"calibration={calibration}",
                    "--log", str(tmp_path / "calibrate.log"), "--params", "calibrate", *common],
                   cwd=REPO, env=env, check=True, capture_output=True)
    rule = load_calibration(calibration)["operating_threshold"]["rule"]
    assert rule == params["calibrate"]["rule"]
    metrics = tmp_path / "results" / "metrics.json"
    subprocess.run([sys.executable, "workflow/scripts/evaluate.py", "--rule", "evaluate_binary",
                    *binary, "--input", f"model={model}", f"calibration={calibration}",
                    f"processed={processed}", f"history={hist}",
                    "--output", f"metrics={metrics}", f"curves={tmp_path / 'curves.png'}",
                    "--log", str(tmp_path / "evaluate.log"), "--params", "evaluate", "seed",
                    *common], cwd=REPO, env=env, check=True, capture_output=True)
    saved = json.loads(metrics.read_text())
    assert saved["arch"] == "resnet18"
    assert saved["operating_threshold"] == load_calibration(calibration)["operating_threshold"]
    # a 3-class run from another architecture's checkpoint fails with one clear line
    bad = subprocess.run([sys.executable, "workflow/scripts/train.py", "--rule",
                          "train_three_class", "--wildcards", "task=three_class", "arch=vgg16",
                          "--input", f"processed={processed}", f"init={model}", "--output",
                          f"model={tmp_path / 'models' / 'three_class' / 'vgg16' / 'best.pt'}",
                          f"history={tmp_path / 'h3.csv'}",
                          f"val_predictions={tmp_path / 'v3.csv'}", "--params", "train", "seed",
                          "device", *common], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "'resnet18' cannot initialise 'vgg16'" in bad.stderr
    assert "Traceback" not in bad.stderr
