"""Argument checks of the benchmark scripts that guard against silently wrong runs."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """The script sets PNEUMOCXR_RESUME_DIR and the thread counts (torch, BLAS/OpenMP): undo."""
    from threadpoolctl import threadpool_limits

    monkeypatch.setenv("PNEUMOCXR_RESUME_DIR", str(tmp_path / "resume"))
    n = torch.get_num_threads()
    with threadpool_limits(limits=None):      # restores the pools' sizes on exit
        yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("flags", [
    ["--tasks", "three_class"],
    ["--tasks", "3class", "--init-3class", "binary"],          # the spellings of bench/results
    ["--tasks", "three_class", "--init-three-class", "binary"],
])
def test_classify_accuracy_three_class_only_needs_the_binary_checkpoint(tmp_path, capsys, flags):
    bench = _load("classify_accuracy")
    with pytest.raises(SystemExit) as exc:
        bench.main([*flags, "--root", str(tmp_path / "no_data"),
                    "--workdir", str(tmp_path / "work"),
                    "--out", str(tmp_path / "out.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "models/binary/resnet18/best.pt" in err and "--init-three-class none" in err
    assert not (tmp_path / "out.json").exists()


def test_classify_accuracy_keeps_the_old_3class_flag_spellings_as_aliases():
    ap = _load("classify_accuracy").parser()
    new = ap.parse_args(["--epochs-three-class", "3", "--lr-three-class", "0.01",
                         "--init-three-class", "none", "--tasks", "three_class",
                         "--out", "o.json"])
    old = ap.parse_args(["--epochs-3class", "3", "--lr-3class", "0.01", "--init-3class", "none",
                         "--tasks", "3class", "--out", "o.json"])
    assert vars(new) == vars(old)
    assert (new.epochs_three_class, new.lr_three_class, new.init_three_class, new.tasks) == \
        (3, 0.01, "none", ["three_class"])
    both = ap.parse_args(["--tasks", "binary", "3class", "--out", "o.json"])
    assert both.tasks == ["binary", "three_class"]
    with pytest.raises(SystemExit):
        ap.parse_args(["--tasks", "four_class", "--out", "o.json"])



def _run(variant: str, seed: int, auroc: float, accuracy: float,
         seconds: float | None = 100.0) -> dict:
    keys = _load("recipe_ablation").FIGURES       # every figure a run records, proxy D's too
    return {"variant": variant, "seed": seed, "train_seconds": seconds,
            "figures": {k: auroc if "auroc" in k else accuracy for k in keys}}


def test_recipe_ablation_pairs_runs_by_seed_and_applies_the_precision_criteria(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))          # the script imports bench/_common.py
    compare_to = _load("recipe_ablation").compare_to
    close = compare_to([_run("fp32", 1, 0.990, 0.93), _run("base", 1, 0.992, 0.93),
                        _run("fp32", 2, 0.985, 0.92, 150.0), _run("base", 2, 0.981, 0.91),
                        _run("fp32", 3, 0.97, 0.90)], "fp32")      # seed 3: no base twin
    assert close["seeds_paired"] == [1, 2]
    assert close["test_auroc"]["deltas"] == [-0.002, 0.004]
    assert close["test_auroc"]["mean_delta"] == 0.001
    assert close["test_auroc"]["reference_spread"] == 0.011
    assert close["within_tolerance"] and close["within_seed_spread"]
    assert close["selection_score_delta"] == 0.001
    assert close["train_seconds_ratio"] == 1.25                    # paired: (1.0 + 1.5) / 2
    cached = compare_to([_run("fp32", 1, 0.99, 0.93), _run("base", 1, 0.99, 0.93, None)], "fp32")
    assert cached["train_seconds_ratio"] is None          # base came from the resume cache
    far = compare_to([_run("no_hflip", 1, 0.95, 0.90), _run("base", 1, 0.99, 0.93),
                      _run("no_hflip", 2, 0.95, 0.90), _run("base", 2, 0.98, 0.92)], "no_hflip")
    assert far["test_auroc"]["mean_delta"] == -0.035
    assert not far["within_tolerance"] and not far["within_seed_spread"]


def test_recipe_ablation_variants_win_over_the_architecture_overrides_of_params_yaml(
        monkeypatch, repo_root):
    from pneumocxr.settings import TrainSettings

    monkeypatch.syspath_prepend(str(BENCH))
    variant_recipe = _load("recipe_ablation").variant_recipe
    recipe = yaml.safe_load((repo_root / "params.yaml").read_text())["train"]
    recipe["per_arch"]["alexnet"] = {"lr": 1e-4, "epochs": 9}   # what a variant must beat
    lr = TrainSettings.for_task(variant_recipe(recipe, "alexnet", 3, "lr_2e-4"), "binary", "alexnet")
    assert (lr.lr, lr.epochs) == (2e-4, 3)
    base = TrainSettings.for_task(variant_recipe(recipe, "alexnet", 3, "base"), "binary", "alexnet")
    assert (base.lr, base.epochs) == (1e-4, 3)           # base: the architecture's recipe
    aug = TrainSettings.for_task(variant_recipe(recipe, "resnet18", 2, "no_hflip"), "binary",
                                 "resnet18")
    assert aug.augment.hflip == 0.0 and aug.augment.rotation == recipe["augment"]["rotation"]
    # the joint head: the three-class task trained with the binary recipe, not the fine-tune's
    joint = TrainSettings.for_task(variant_recipe(recipe, "resnet18", 6, "joint_three_class"),
                                   "three_class", "resnet18")
    binary = TrainSettings.for_task(variant_recipe(recipe, "resnet18", 6, "base"), "binary",
                                    "resnet18")
    assert recipe["three_class"]["lr"] != binary.lr
    assert joint == binary
    longer = TrainSettings.for_task(variant_recipe(recipe, "resnet18", 6, "joint_three_class_2x"),
                                    "three_class", "resnet18")
    assert longer == dataclasses.replace(binary, epochs=12)


def test_recipe_ablation_refuses_a_missing_data_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    with pytest.raises(SystemExit) as exc:
        _load("recipe_ablation").main(["--root", str(tmp_path / "nope"),
                                       "--out", str(tmp_path / "o.json")])
    assert exc.value.code == 2 and "nope: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_recipe_ablation_takes_base_runs_only_from_results_of_the_same_setting(
        tmp_path, capsys, monkeypatch):
    import json
    monkeypatch.syspath_prepend(str(BENCH))
    main = _load("recipe_ablation").main
    (tmp_path / "root").mkdir()
    earlier = {"what": "binary resnet18 from scratch", "proxy": {"copies": 2},
               "data": {"resize": 146, "crop": 128, "epochs": 10},
               "runs": [{"variant": "base", "seed": 1, "figures": {}}]}
    (tmp_path / "e.json").write_text(json.dumps(earlier))
    (tmp_path / "bad.json").write_text("{")
    common = ["--root", str(tmp_path / "root"), "--out", str(tmp_path / "o.json"),
              "--variants", "equalize"]
    cases = [(["--reference-from", str(tmp_path / "e.json")],      # 64 px, 6 epochs by default
              "runs of {'resize': 146, 'crop': 128, 'epochs': 10}"),
             (["--reference-from", str(tmp_path / "bad.json")], "bad.json: not a result"),
             (["--resize", "146", "--crop", "128", "--epochs", "10", "--seeds", "1", "2",
               "--reference-from", str(tmp_path / "e.json")], "base runs of seeds [2]")]
    for flags, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(common + flags)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_knn_shift_names_the_missing_models_of_the_workdir(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    with pytest.raises(SystemExit) as exc:
        _load("knn_shift").main(["--workdir", str(tmp_path), "--seeds", "7",
                                 "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "resnet18_base_seed7/best.pt" in err
    assert "recipe_ablation.py --variants base" in err and not (tmp_path / "o.json").exists()


def test_seed_ensembles_names_the_missing_models_of_the_workdir(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    with pytest.raises(SystemExit) as exc:
        _load("seed_ensembles").main(["--workdir", str(tmp_path), "--seeds", "7", "8",
                                      "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "resnet18_base_2x_seed8/best.pt" in err
    assert "--variants base base_2x" in err and not (tmp_path / "o.json").exists()


def test_seed_spread_refuses_a_workflow_without_prepared_arrays(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    (tmp_path / "params.yaml").write_text((BENCH.parent / "params.yaml").read_text())
    with pytest.raises(SystemExit) as exc:
        _load("seed_spread").main(["--workflow", str(tmp_path), "--seeds", "1",
                                   "--workdir", str(tmp_path / "w"),
                                   "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no prepared arrays" in err and "data/processed" in err
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "_common"))
def test_every_benchmark_script_imports_and_prints_its_usage(name, monkeypatch, capsys):
    """A library rename that breaks a benchmark shows here, not in the next session's run."""
    import sys

    monkeypatch.syspath_prepend(str(BENCH))
    module = _load(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as stop:
        module.main()
    assert stop.value.code == 0 and "usage" in capsys.readouterr().out


def test_aspect_proxy_stretches_each_image_by_its_own_seeded_factor(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    shift = _load("anomaly_shift")
    images = np.zeros((3, 32, 32), dtype=np.uint8)
    images[:, :, 12:20] = 255                          # a bar 8 px wide
    a, b = shift.proxy_aspect(images, 5), shift.proxy_aspect(images, 5)
    assert a.shape == images.shape and np.array_equal(a, b)
    widths = [(im[16] > 127).sum() for im in a]
    assert all(6 <= w <= 10 for w in widths) and len(set(widths)) > 1


def test_model_comparison_collects_each_model_and_its_training_time(tmp_path):
    mc = _load("model_comparison")
    with pytest.raises(SystemExit, match=r"model_comparison\.csv: missing; run the comparison"):
        mc.collect(tmp_path)
    classify = tmp_path / "results" / "classify"
    (classify / "binary" / "vgg16").mkdir(parents=True)
    head = ("task,arch,model,metric,value,ci_low,ci_high,val_auroc,val_auroc_ci_low,"
            "val_auroc_ci_high,converged,rank\n")
    rows = "".join(f"binary,vgg16,vgg16 (64 px),{m},{v},{v - 0.1},{v + 0.01},0.5,0.45,0.55,"
                   f"False,\n" for m, v in (("accuracy", 0.26), ("auroc", 0.5)))
    (classify / "model_comparison.csv").write_text(head + rows)
    (classify / "binary" / "vgg16" / "history.csv").write_text(
        "epoch,val_auroc\n1,0.5\n2,0.5\n")
    log = tmp_path / "logs" / "train" / "binary" / "vgg16.log"
    log.parent.mkdir(parents=True)
    log.write_text("x INFO pneumocxr.train: binary/vgg16 epoch 1/2: train loss 0.7 | val loss 0.7"
                   " auroc 0.5 | lr 1e-05 | 268 s, 16.1 img/s *\n"
                   "x INFO pneumocxr.train: binary/vgg16 epoch 2/2: train loss 0.7 | lr 1e-05 |"
                   " 241 s, 18.1 img/s\n")
    models = mc.collect(tmp_path)
    m = models["binary/vgg16"]
    assert m["converged"] is False and m["rank"] is None
    assert m["dev_test"] == {"accuracy": [0.26, 0.16, 0.27], "auroc": [0.5, 0.4, 0.51]}
    assert m["history"] == [{"epoch": 1.0, "val_auroc": 0.5}, {"epoch": 2.0, "val_auroc": 0.5}]
    assert m["train_seconds"] == 509.0
