"""Training: resume after a kill is bitwise-identical, determinism, outputs, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pneumocxr.calibration import run_calibration
from pneumocxr.checkpoint import load_checkpoint
from pneumocxr.config import ParamsError
from pneumocxr.datasets import ArrayDataset, Augment, gaussian_blur, load_task_split, to_float
from pneumocxr.logits import read_predictions
from pneumocxr.settings import CalibrateSettings, TrainSettings
from pneumocxr.train import (HISTORY_COLUMNS, fit, progressive_schedule, run_training,
                             subsample_by_patient)

SUBTYPES = ("normal", "bacteria", "virus")
METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "val_auroc", "lr"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def synthetic_images(labels: np.ndarray, size: int = 32, seed: int = 0) -> np.ndarray:
    """Noise images; class 1 has a bright blob on the left, class 2 on the right."""
    rng = np.random.default_rng(seed)
    x = rng.normal(90, 25, (len(labels), size, size))
    yy, xx = np.mgrid[:size, :size]
    for i, y in enumerate(labels):
        if y:
            cx = size * (0.3 if y == 1 else 0.7) + rng.normal(0, 1.5)
            blob = np.exp(-((xx - cx) ** 2 + (yy - size / 2) ** 2) / (2 * (size / 8) ** 2))
            x[i] += 110 * blob
    return np.clip(x, 0, 255).astype(np.uint8)


def write_processed(root: Path, counts: dict[str, dict[str, int]], size: int = 32,
                    data_source: str = "kermany", subtypes: bool = True) -> Path:
    """A tiny prepared-data folder in the format of :mod:`pneumocxr.data.arrays`."""
    rows = []
    (root / "plain").mkdir(parents=True, exist_ok=True)
    for s, (split, per_class) in enumerate(counts.items()):
        labels = np.concatenate([np.full(n, SUBTYPES.index(k)) for k, n in per_class.items()])
        np.save(root / "plain" / f"{split}.npy", synthetic_images(labels, size, seed=s))
        for i, y in enumerate(labels):
            sub = SUBTYPES[y]
            rows.append({"split": split, "index": i, "file": f"{split}/{sub}_{i}.jpeg",
                         "official_split": split, "label": "NORMAL" if y == 0 else "PNEUMONIA",
                         "subtype": sub if subtypes else "unknown",
                         "patient": f"{split}-{sub}-{i // 2}", "sha256": f"{s}{i}",
                         "orig_width": size, "orig_height": size})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    (root / "info.json").write_text(json.dumps({"data_source": data_source}))
    return root


TINY = {"train": {"normal": 6, "bacteria": 5, "virus": 5},
        "val": {"normal": 6, "bacteria": 4, "virus": 4},
        "test": {"normal": 8, "bacteria": 6, "virus": 6},
        "val_official": {"normal": 4, "bacteria": 4}}
FAST = {"epochs": 3, "batch_size": 8, "precision": "fp32", "eval_batch_size": 64,
        "lr": 1e-3, "select": "val_loss", "schedule": "step", "step_size": 1, "step_gamma": 0.5}


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    return write_processed(tmp_path_factory.mktemp("processed"), TINY)


def _datasets(processed, task="binary"):
    return load_task_split(processed, "train", task)[0], load_task_split(processed, "val", task)[0]


def _fit(processed, out: Path, task="binary", params=None, **kw):
    (train, source), (val, _) = (load_task_split(processed, s, task) for s in ("train", "val"))
    p = TrainSettings.for_task({**FAST, **(params or {})}, task)
    kw.setdefault("resume_root", out / "resume")
    return fit(train, val, arch="resnet18", task=task, params=p, model_path=out / "best.pt",
               history_path=out / "history.csv",
               val_predictions_path=out / "val_predictions.csv", seed=kw.pop("seed", 0),
               data_source=source, **kw)


def smoke_run(processed_dir: Path, workdir: Path, *, task: str = "binary",
              arch: str = "resnet18", n_train: int = 500, epochs: int = 2,
              input_size: int = 64, seed: int = 0, n_boot: int = 50) -> dict:
    """A short real-data run for CI: ~``n_train`` train images, ``epochs``, ``input_size`` px.

    Trains on a patient subsample, calibrates on the full val split, evaluates on the full
    val/test splits and returns the evaluation metrics (e.g. ``metrics["test"]["auroc"]
    ["value"]``). Writes only in ``workdir``.
    """
    from pneumocxr.evaluate import evaluate_checkpoint

    workdir = Path(workdir)
    train, source = load_task_split(processed_dir, "train", task)
    val, _ = load_task_split(processed_dir, "val", task)
    train = subsample_by_patient(train, n_train, seed)
    p = TrainSettings.for_task({"epochs": epochs, "input_size": input_size, "batch_size": 32,
                                "precision": "fp32"}, task)
    model_path = workdir / "models" / task / arch / "best.pt"
    fit(train, val, arch=arch, task=task, params=p, model_path=model_path,
        history_path=workdir / "history.csv",
        val_predictions_path=workdir / "val_predictions.csv", seed=seed, device="cpu",
        data_source=source, resume=False, resume_root=workdir / "resume")
    calibration = run_calibration(workdir / "val_predictions.csv",
                                  model_path.parent / "calibration.json")
    metrics, _ = evaluate_checkpoint(model_path, processed_dir, task=task,
                                     calibration=calibration,
                                     settings={"splits": ["val", "test"], "n_boot": n_boot},
                                     seed=seed)
    return metrics


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("params", [{"schedule": "onecycle"}, {"schedule": "step"},
                                    {"schedule": "onecycle", "ema": 0.9},
                                    {"input_size": 64, "progressive_scale": 0.5}],
                         ids=["onecycle", "step", "ema", "progressive"])
def test_resume_after_a_kill_ends_bitwise_identical_to_an_uninterrupted_run(
        processed, tmp_path, params):
    assert _fit(processed, tmp_path / "straight", params=params)["resumed_after"] == 0

    class Killed(Exception):
        pass

    def kill_after_first(epoch, row):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        _fit(processed, tmp_path / "killed", params=params, on_epoch_end=kill_after_first)
    assert not (tmp_path / "killed" / "best.pt").exists()
    seen = []
    summary = _fit(processed, tmp_path / "killed", params=params,
                   on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [2, 3] and summary["resumed_after"] == 1  # after the last finished epoch
    assert _same_weights(tmp_path / "straight" / "best.pt", tmp_path / "killed" / "best.pt")
    h1 = pd.read_csv(tmp_path / "straight" / "history.csv")
    h2 = pd.read_csv(tmp_path / "killed" / "history.csv")
    pd.testing.assert_frame_equal(h1[METRIC_COLUMNS], h2[METRIC_COLUMNS], check_exact=True)
    m1 = load_checkpoint(tmp_path / "straight" / "best.pt")["meta"]
    m2 = load_checkpoint(tmp_path / "killed" / "best.pt")["meta"]
    assert m1 == m2
    # the val predictions (the calibrate stage's input) and so the calibration are identical
    assert (tmp_path / "straight" / "val_predictions.csv").read_bytes() == \
        (tmp_path / "killed" / "val_predictions.csv").read_bytes()
    c1, c2 = (run_calibration(tmp_path / run / "val_predictions.csv",
                              tmp_path / run / "calibration.json")
              for run in ("straight", "killed"))
    assert c1["temperature"] == c2["temperature"]
    assert c1["operating_threshold"] == c2["operating_threshold"]


def test_same_params_and_seed_give_identical_results_and_another_seed_does_not(processed, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        _fit(processed, tmp_path / name, params={"epochs": 1}, seed=seed, resume=False)
    assert _same_weights(tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt")
    assert not _same_weights(tmp_path / "a" / "best.pt", tmp_path / "c" / "best.pt")
    ha = pd.read_csv(tmp_path / "a" / "history.csv")
    hb = pd.read_csv(tmp_path / "b" / "history.csv")
    pd.testing.assert_frame_equal(ha[METRIC_COLUMNS], hb[METRIC_COLUMNS], check_exact=True)


def test_ema_validates_and_saves_the_average_not_the_last_weights(processed, tmp_path):
    _fit(processed, tmp_path / "raw", params={"epochs": 2}, resume=False)
    # a decay so small that the average is the last step's weights: the same model, bitwise
    _fit(processed, tmp_path / "tiny", params={"epochs": 2, "ema": 1e-12}, resume=False)
    assert _same_weights(tmp_path / "raw" / "best.pt", tmp_path / "tiny" / "best.pt")
    _fit(processed, tmp_path / "ema", params={"epochs": 2, "ema": 0.9}, resume=False)
    assert not _same_weights(tmp_path / "raw" / "best.pt", tmp_path / "ema" / "best.pt")
    raw, ema = (pd.read_csv(tmp_path / r / "history.csv") for r in ("raw", "ema"))
    # the same training steps (train loss) but another network validated
    pd.testing.assert_series_equal(raw["train_loss"], ema["train_loss"], check_exact=True)
    assert not np.array_equal(raw["val_loss"], ema["val_loss"])
    meta = load_checkpoint(tmp_path / "ema" / "best.pt")["meta"]
    assert meta["params"]["ema"] == 0.9
    with pytest.raises(ParamsError, match=r"train\.ema"):
        TrainSettings.for_task({"ema": 1.0}, "binary")


def test_mixup_trains_on_blended_pairs_seeded_like_every_other_draw(processed, tmp_path,
                                                                   monkeypatch):
    import pneumocxr.train as train_module

    seen: list[torch.Tensor] = []
    for name in ("a", "b"):
        _fit(processed, tmp_path / name, params={"epochs": 2, "mixup": 0.2}, resume=False)
    assert _same_weights(tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt")
    _fit(processed, tmp_path / "plain", params={"epochs": 2}, resume=False)
    assert not _same_weights(tmp_path / "a" / "best.pt", tmp_path / "plain" / "best.pt")
    # the batches the network is trained on are blends: not the augmented images themselves
    train, _ = _datasets(processed)
    net = train_module.create_model("resnet18", 2)
    real = net.forward
    monkeypatch.setattr(net, "forward", lambda x: (seen.append(x.detach().clone()), real(x))[1])
    crit = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    args = dict(normalization={"mean": [0.0], "std": [1.0]}, batch_size=8)
    train_module.train_one_epoch(net, train, crit, opt, generator=torch.Generator().manual_seed(0),
                                 **args)
    plain = seen[:]
    seen.clear()
    train_module.train_one_epoch(net, train, crit, opt, generator=torch.Generator().manual_seed(0),
                                 mixup=0.2, **args)
    assert len(seen) == len(plain) and not any(torch.equal(a, b) for a, b in zip(seen, plain))
    for x, p in zip(seen, plain):       # inside the range of its own batch
        assert float(x.min()) >= float(p.min()) - 1e-6 and float(x.max()) <= float(p.max()) + 1e-6
    with pytest.raises(ParamsError, match=r"train\.mixup"):
        TrainSettings.for_task({"mixup": -0.1}, "binary")


def test_a_negative_cosine_head_or_an_erase_probability_above_one_names_the_key():
    with pytest.raises(ParamsError, match=r"train\.cosine_head"):
        TrainSettings.for_task({"cosine_head": -1.0}, "binary")
    with pytest.raises(ParamsError, match=r"train\.augment\.erase"):
        Augment.from_params({"erase": 1.5})


def test_progressive_schedule_rounds_the_side_and_the_epochs():
    def schedule(side, arch="resnet18", **kw):
        return progressive_schedule(side, TrainSettings.for_task({"epochs": 10, **kw}, "binary"),
                                    arch)

    assert schedule(128) == (128, 0)                                   # default: off
    assert schedule(128, progressive_scale=0.75) == (96, 5)
    assert schedule(64, progressive_scale=0.75, progressive_epochs=0.3) == (48, 3)
    assert schedule(146, progressive_scale=0.7) == (104, 5)            # 102.2 -> multiple of 8
    assert schedule(64, progressive_scale=0.1) == (32, 5)              # ResNet-18's minimum
    assert schedule(32, progressive_scale=0.5) == (32, 0)              # nothing smaller: off
    assert schedule(128, progressive_scale=0.75, progressive_epochs=0.01) == (128, 0)
    with pytest.raises(ParamsError, match=r"train\.progressive_epochs"):
        TrainSettings.for_task({"progressive_epochs": 1.0}, "binary")


def test_progressive_resolution_trains_small_first_and_validates_at_full_size(
        processed, tmp_path, monkeypatch):
    import pneumocxr.train as train_module

    sides: list[int | None] = []
    one_epoch = train_module.train_one_epoch

    def spy(*args, **kw):
        sides.append(kw["input_size"])
        return one_epoch(*args, **kw)

    monkeypatch.setattr(train_module, "train_one_epoch", spy)
    full = 64                    # upsampled from the prepared 32 px (ResNet-18's minimum)
    params = {"epochs": 4, "input_size": full, "progressive_scale": 0.5, "progressive_epochs": 0.5}
    _fit(processed, tmp_path / "prog", params=params, resume=False)
    assert sides == [full // 2, full // 2, full, full]
    meta = load_checkpoint(tmp_path / "prog" / "best.pt")["meta"]
    assert meta["input_size"] == full and meta["params"]["progressive_scale"] == 0.5
    sides.clear()
    _fit(processed, tmp_path / "plain", params={"epochs": 4, "input_size": full}, resume=False)
    assert sides == [full] * 4
    prog, plain = (pd.read_csv(tmp_path / r / "history.csv") for r in ("prog", "plain"))
    assert not np.array_equal(prog["train_loss"], plain["train_loss"])


def test_equalize_travels_with_the_weights_and_a_start_checkpoint_must_match_it(processed,
                                                                              tmp_path):
    from pneumocxr.inference import predict_logits

    eq = {"epochs": 1, "equalize": True}
    _fit(processed, tmp_path / "binary", params=eq, resume=False)
    meta = load_checkpoint(tmp_path / "binary" / "best.pt")["meta"]
    assert meta["normalization"]["equalize"] is True and meta["params"]["equalize"] is True
    # the model answers the same under an increasing change of the intensities
    from pneumocxr.models import load_model
    net, _ = load_model(tmp_path / "binary" / "best.pt")
    val, _ = load_task_split(processed, "val", "binary")
    gamma = np.clip(255 * (val.images / 255.0) ** 1.3, 0, 255).round().astype(np.uint8)
    run = [predict_logits(net, x, normalization=meta["normalization"], input_size=32)
           for x in (val.images, gamma)]
    plain = predict_logits(net, gamma, normalization={k: v for k, v in meta["normalization"].items()
                                                      if k != "equalize"}, input_size=32)
    assert np.abs(run[0] - run[1]).max() < 0.05 * np.abs(run[0]).max()
    assert np.abs(run[0] - plain).max() > np.abs(run[0] - run[1]).max()
    init = tmp_path / "binary" / "best.pt"
    _fit(processed, tmp_path / "tc", task="three_class", params=eq, init=init, resume=False)
    assert load_checkpoint(tmp_path / "tc" / "best.pt")["meta"]["normalization"]["equalize"]
    with pytest.raises(ValueError, match=r"best\.pt: checkpoint trained with equalize True but "
                                         r"train\.equalize is False"):
        _fit(processed, tmp_path / "tc2", task="three_class", params={"epochs": 1}, init=init,
             resume=False)


def test_a_cosine_head_is_trained_saved_fine_tuned_and_exported(processed, tmp_path):
    from pneumocxr.models import CosineHead, load_model

    cos = {"epochs": 1, "cosine_head": 16.0}
    res = _fit(processed, tmp_path / "binary", params=cos, resume=False)
    meta = load_checkpoint(tmp_path / "binary" / "best.pt")["meta"]
    assert meta["cosine_head"] == 16.0 and 0.0 <= res["val"]["auroc"] <= 1.0
    net, _ = load_model(tmp_path / "binary" / "best.pt")
    assert isinstance(net.fc, CosineHead)
    init = tmp_path / "binary" / "best.pt"
    _fit(processed, tmp_path / "tc", task="three_class", params=cos, init=init, resume=False)
    tc, tc_meta = load_model(tmp_path / "tc" / "best.pt")
    assert isinstance(tc.fc, CosineHead) and tc.fc.out_features == 3
    assert tc_meta["cosine_head"] == 16.0
    # the linear default records 0 and builds a linear head
    _fit(processed, tmp_path / "lin", params={"epochs": 1}, resume=False)
    assert load_checkpoint(tmp_path / "lin" / "best.pt")["meta"]["cosine_head"] == 0.0
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from pneumocxr.export import export_onnx
    report = export_onnx(init, tmp_path / "binary.onnx")
    assert report["check"]["max_abs_diff_probabilities"] <= 1e-4


def test_best_pt_holds_weights_and_metadata_but_no_optimizer_state(processed, tmp_path):
    from pneumocxr.inference import predict_logits
    from pneumocxr.models import load_model

    summary = _fit(processed, tmp_path, params={"epochs": 2})
    ckpt = load_checkpoint(tmp_path / "best.pt", kind="classifier")
    assert set(ckpt) == {"format", "kind", "model", "meta"}
    assert (ckpt["format"], ckpt["kind"]) == (2, "classifier")
    meta = ckpt["meta"]
    for key in ("arch", "task", "class_names", "in_chans", "input_size", "normalization",
                "params", "versions", "data_source"):
        assert key in meta, key
    # the operating point is the calibrate stage's, and no clock time goes in
    for key in ("operating_threshold", "temperature", "created"):
        assert key not in meta, key
    assert meta["class_names"] == ["normal", "pneumonia"] and meta["input_size"] == 32
    assert meta["data_source"] == "kermany" and meta["versions"]["torch"] == torch.__version__
    assert meta["best_epoch"] == summary["best_epoch"]
    hist = pd.read_csv(tmp_path / "history.csv")
    assert tuple(HISTORY_COLUMNS) == tuple(METRIC_COLUMNS)   # no seconds, no images/s
    assert list(hist.columns) == list(HISTORY_COLUMNS) and list(hist["epoch"]) == [1, 2]
    assert np.isfinite(hist.to_numpy(float)).all()
    # the val predictions are the selected model's logits on the whole val split
    pred = read_predictions(tmp_path / "val_predictions.csv", ["normal", "pneumonia"])
    _, val = _datasets(processed)
    np.testing.assert_array_equal(pred.labels, val.labels)
    assert list(pred.patients) == list(val.patients)
    model, meta = load_model(tmp_path / "best.pt")
    logits = predict_logits(model, val, normalization=meta["normalization"], input_size=32)
    np.testing.assert_allclose(pred.logits, logits, rtol=1e-6, atol=1e-6)
    # calibrating them gives a temperature and a threshold strictly inside (0, 1)
    cal = run_calibration(tmp_path / "val_predictions.csv", tmp_path / "calibration.json")
    assert 0.0 < cal["operating_threshold"]["value"] < 1.0 and cal["temperature"] > 0
    assert cal["fitted_on"]["n_images"] == len(val)


def test_three_class_model_starts_from_the_binary_checkpoint_of_the_same_architecture(processed, tmp_path):
    _fit(processed, tmp_path / "binary", params={"epochs": 1})
    init = tmp_path / "binary" / "best.pt"
    _fit(processed, tmp_path / "three_class", task="three_class", params={"epochs": 1}, init=init)
    meta = load_checkpoint(tmp_path / "three_class" / "best.pt")["meta"]
    assert meta["class_names"] == ["normal", "bacteria", "virus"]
    assert meta["init"] == str(init) and len(meta["init_sha256"]) == 64
    train, val = _datasets(processed, "three_class")
    with pytest.raises(ValueError, match="'resnet18' cannot initialise 'vgg16'"):
        fit(train, val, arch="vgg16", task="three_class", params=FAST, init=init,
            model_path=tmp_path / "x.pt", history_path=tmp_path / "x.csv",
            resume_root=tmp_path / "r")


@pytest.mark.parametrize("override,message", [
    ({"epochs": 0}, r"train\.epochs: 0 is less than the minimum of 1"),
    ({"lr": -1.0}, r"train\.lr: -1\.0 is less than or equal to the minimum of 0"),
    ({"batch_size": 1}, r"train\.batch_size: 1 is less than the minimum of 2"),
    ({"optimizer": "adam"}, r"train\.optimizer: 'adam' is not allowed; allowed values: "
                            r"\['adamw', 'sgd'\]"),
    ({"augment": {"scale": [0.0, 1.0]}}, r"train\.augment\.scale"),
    ({"augment": {"scale": [0.9, 0.5]}}, r"train\.augment\.scale: \[min, max\] with min <= max"),
    ({"augment": {"zoom": 2}}, r"train\.augment\.zoom: unknown key"),
    ({"threshold": {"rule": "test"}}, r"train\.threshold: renamed; use calibrate"),
    ({"3class": {"epochs": 2}}, r"train\.3class: renamed; use train\.three_class"),
    ({"three_class": {"epochs": 0}}, r"train\.three_class\.epochs: 0 is less than"),
    ({"epoch": 3}, r"train\.epoch: unknown key; allowed keys here: .*epochs"),
    ({"per_arch": {"alexnt": {"lr": 1e-4}}},
     r"train\.per_arch\.alexnt: unknown key; allowed keys here: alexnet, resnet18, vgg16"),
    ({"per_arch": {"vgg16": {"archs": ["vgg16"]}}}, r"train\.per_arch\.vgg16\.archs: unknown key"),
    ({"per_arch": {"vgg16": {"lr": 0}}}, r"train\.per_arch\.vgg16\.lr: 0 is less than or equal"),
    ({"per_arch": {"alexnet": {"augment": {"ratio": [2, 1]}}}},
     r"train\.per_arch\.alexnet\.augment\.ratio: \[min, max\] with min <= max"),
])
def test_train_params_out_of_range_are_clear_errors(override, message):
    with pytest.raises(ParamsError, match=message):
        TrainSettings.for_task(override, "binary")


def test_threshold_rule_out_of_range_is_a_clear_calibrate_error():
    with pytest.raises(ParamsError, match=r"calibrate\.rule: 'test' is not allowed"):
        CalibrateSettings.from_params({"rule": "test"})


def test_task_overrides_apply_to_their_task_only():
    params = {"epochs": 5, "binary": {"lr": 5e-3}, "three_class": {"epochs": 2, "lr": 1e-4}}
    pb = TrainSettings.for_task(params, "binary")
    assert pb.epochs == 5 and pb.lr == 5e-3
    p3 = TrainSettings.for_task(params, "three_class")
    assert p3.epochs == 2 and p3.lr == 1e-4
    # the merged recipe is complete and valid: it reads back as itself
    assert TrainSettings.for_task(p3.as_dict(), "three_class") == p3
    assert TrainSettings.for_task(p3, "three_class") is p3
    with pytest.raises(ValueError, match="unknown task '3class'"):
        TrainSettings.for_task(params, "3class")


def test_the_joint_network_takes_the_binary_recipe_not_the_fine_tunes():
    params = {"epochs": 5, "binary": {"lr": 5e-3}, "three_class": {"epochs": 2, "lr": 1e-4},
              "joint_head": True}
    p3 = TrainSettings.for_task(params, "three_class")
    assert (p3.epochs, p3.lr) == (5, 5e-3)
    assert TrainSettings.for_task(params, "binary") == p3
    with pytest.raises(ParamsError, match=r"train\.three_class\.joint_head: unknown key"):
        TrainSettings.for_task({"three_class": {"joint_head": True}}, "three_class")


def test_architecture_overrides_apply_to_their_architecture_over_the_task():
    params = {"lr": 2e-3, "three_class": {"lr": 1e-3, "epochs": 3},
              "per_arch": {"alexnet": {"lr": 2e-4}, "vgg16": {}}}
    for task in ("binary", "three_class"):
        assert TrainSettings.for_task(params, task, "alexnet").lr == 2e-4
        assert TrainSettings.for_task(params, task, "vgg16") == TrainSettings.for_task(params, task)
    assert TrainSettings.for_task(params, "three_class", "alexnet").epochs == 3   # rest kept
    assert TrainSettings.for_task(params, "binary", "resnet18").lr == 2e-3      # no block
    assert TrainSettings.for_task(params, "three_class", "resnet18").lr == 1e-3
    # the resolved recipe carries no override blocks: it reads back as itself
    p = TrainSettings.for_task(params, "binary", "alexnet")
    assert "per_arch" not in p.as_dict() and TrainSettings.for_task(p.as_dict(), "binary") == p


def test_fit_reads_the_override_of_the_architecture_it_trains(processed, tmp_path):
    train, val = _datasets(processed)
    params = {**FAST, "epochs": 1, "per_arch": {"resnet18": {"lr": 1e-5, "schedule": "constant"}}}
    fit(train, val, arch="resnet18", task="binary", params=params,
        model_path=tmp_path / "m.pt", history_path=tmp_path / "h.csv")
    assert pd.read_csv(tmp_path / "h.csv")["lr"].tolist() == [pytest.approx(1e-5)]


def test_input_smaller_than_the_model_minimum_fails_before_training(processed, tmp_path):
    train, val = _datasets(processed)
    with pytest.raises(ValueError, match="alexnet needs input of at least 63x63"):
        fit(train, val, arch="alexnet", task="binary", params=FAST,
            model_path=tmp_path / "m.pt", history_path=tmp_path / "h.csv")


def test_validation_split_without_every_class_is_rejected(tmp_path):
    root = write_processed(tmp_path, {"train": {"normal": 8, "bacteria": 8},
                                      "val": {"bacteria": 4}})
    train, val = _datasets(root)
    with pytest.raises(ValueError, match=r"no \['normal'\] image"):
        fit(train, val, arch="resnet18", task="binary", params=FAST,
            model_path=tmp_path / "m.pt", history_path=tmp_path / "h.csv")


def test_medmnist_source_without_subtypes_cannot_feed_the_three_class_task(tmp_path):
    root = write_processed(tmp_path, {"train": {"normal": 4, "bacteria": 4}},
                           data_source="medmnist", subtypes=False)
    train, source = load_task_split(root, "train", "binary")
    assert source == "medmnist" and train.class_counts() == [4, 4]
    with pytest.raises(ValueError, match="data_source=medmnist.*no bacteria/virus subtypes"):
        load_task_split(root, "train", "three_class")


def test_missing_split_names_the_file_and_the_fix(tmp_path):
    root = write_processed(tmp_path, {"train": {"normal": 4, "bacteria": 4}})
    with pytest.raises(FileNotFoundError, match="val.npy: missing"):
        load_task_split(root, "val", "binary")
    with pytest.raises(ValueError, match="unknown task"):
        load_task_split(root, "train", "4class")


def test_run_training_writes_its_outputs_and_checks_task_and_arch_first(processed, tmp_path):
    # task and arch come from the rule's wildcards (no longer from the model path): a bad
    # one is a clear error before any training, and nothing is written
    outputs = {"model": tmp_path / "models" / "three_class" / "resnet18" / "best.pt",
               "history": tmp_path / "history.csv",
               "val_predictions": tmp_path / "val_predictions.csv"}
    run_training(processed, outputs, task="three_class", arch="resnet18",
                 train_params={**FAST, "epochs": 1}, device="cpu",
                 resume_root=tmp_path / "resume")
    assert all(p.is_file() for p in outputs.values())
    assert load_checkpoint(outputs["model"])["meta"]["task"] == "three_class"
    assert read_predictions(outputs["val_predictions"]).class_names == SUBTYPES
    bad = {k: tmp_path / "bad" / Path(v).name for k, v in outputs.items()}
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'"):
        run_training(processed, bad, task="binary", arch="resnet50", train_params=FAST,
                     device="cpu", resume_root=tmp_path / "resume")
    with pytest.raises(ValueError, match="unknown task '3class'"):
        run_training(processed, bad, task="3class", arch="resnet18", train_params=FAST,
                     device="cpu", resume_root=tmp_path / "resume")
    assert not (tmp_path / "bad").exists()


def test_the_joint_network_folds_into_the_binary_model_with_its_val_predictions(processed,
                                                                             tmp_path):
    from pneumocxr.inference import predict_logits
    from pneumocxr.joint import run_fold
    from pneumocxr.models import load_model

    joint = {"model": tmp_path / "three_class" / "best.pt", "history": tmp_path / "h.csv",
             "val_predictions": tmp_path / "three_class" / "val_predictions.csv"}
    run_training(processed, joint, task="three_class", arch="resnet18",
                 train_params={**FAST, "epochs": 1, "joint_head": True}, device="cpu",
                 resume_root=tmp_path / "resume")
    binary = {"model": tmp_path / "binary" / "best.pt",
              "val_predictions": tmp_path / "binary" / "val_predictions.csv"}
    val = run_fold(joint["model"], joint["val_predictions"], binary)
    p3 = read_predictions(joint["val_predictions"], SUBTYPES)
    p2 = read_predictions(binary["val_predictions"], ("normal", "pneumonia"))
    probs3 = p3.logits - p3.logits.max(1, keepdims=True)
    probs3 = np.exp(probs3) / np.exp(probs3).sum(1, keepdims=True)
    probs2 = np.exp(p2.logits) / np.exp(p2.logits).sum(1, keepdims=True)
    np.testing.assert_allclose(probs2[:, 1], probs3[:, 1] + probs3[:, 2], rtol=1e-6)
    assert (p2.labels == (p3.labels > 0)).all() and (p2.files == p3.files).all()
    assert val["accuracy"] == pytest.approx(float(((probs2[:, 1] >= 0.5) == p2.labels).mean()))
    # the folded best.pt is the binary model of every later stage, on the binary split
    model, meta = load_model(binary["model"], class_names=["normal", "pneumonia"])
    assert (meta["task"], meta["head_classes"], meta["fold"]) == (
        "binary", list(SUBTYPES), [[0], [1, 2]])
    val_binary, _ = load_task_split(processed, "val", "binary")
    logits = predict_logits(model, val_binary, normalization=meta["normalization"])
    np.testing.assert_allclose(logits, p2.logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="folds a three-class checkpoint"):
        run_fold(binary["model"], binary["val_predictions"], {
            "model": tmp_path / "again.pt", "val_predictions": tmp_path / "again.csv"})


def test_augment_is_seeded_keeps_range_and_disabled_augment_is_identity():
    x = to_float(torch.from_numpy(synthetic_images(np.array([0, 1, 2, 1]), 40))[:, None])
    aug = Augment.from_params()   # the schema's defaults (train.augment)
    a = aug(x, torch.Generator().manual_seed(5), size=32)
    b = aug(x, torch.Generator().manual_seed(5), size=32)
    c = aug(x, torch.Generator().manual_seed(6), size=32)
    assert a.shape == (4, 1, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    off = Augment(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, rotation=0.0, brightness=0.0,
                  contrast=0.0, gamma=0.0, blur=0.0, noise=0.0, erase=0.0)
    assert torch.equal(off(x, torch.Generator()), x)


def test_augment_flip_only_mirrors_the_image():
    x = torch.rand(2, 1, 16, 16)
    flip = Augment(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, rotation=0.0, brightness=0.0,
                   contrast=0.0, gamma=0.0, blur=0.0, noise=0.0, erase=0.0)
    assert torch.allclose(flip(x, torch.Generator()), x.flip(-1), atol=1e-6)
    assert Augment.from_params({"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 1.0,
                                "rotation": 0.0, "brightness": 0.0, "contrast": 0.0}) == flip


def test_acquisition_jitter_leaves_the_other_draws_and_changes_what_it_says():
    x = to_float(torch.from_numpy(synthetic_images(np.array([0, 1, 2, 1]), 40))[:, None])
    base = Augment.from_params()
    assert (base.gamma, base.blur, base.noise) == (0.0, 0.0, 0.0) and not base.acquisition
    only = dict(scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0, rotation=0.0, brightness=0.0,
                contrast=0.0)
    gen = lambda: torch.Generator().manual_seed(3)   # noqa: E731
    # gamma: a monotone curve per image; black stays black, the middle moves
    g = Augment.from_params({**only, "gamma": 0.5})(x, gen())
    assert g.shape == x.shape and not torch.allclose(g, x)
    for xi, gi in zip(x.flatten(1), g.flatten(1)):
        assert torch.all(torch.diff(gi[xi.argsort()]) >= -1e-6)
        assert torch.all(gi[xi == 0] == 0)
    # blur: the mean is kept (reflected edges) and the high frequencies go
    b = Augment.from_params({**only, "blur": 2.0})(x, gen())
    assert torch.allclose(b.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02)
    rough = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()   # noqa: E731
    assert rough(b) < rough(x)
    # noise: zero-mean, seeded
    z1 = Augment.from_params({**only, "noise": 0.1})(x, gen())
    z2 = Augment.from_params({**only, "noise": 0.1})(x, gen())
    assert torch.equal(z1, z2) and not torch.equal(z1, x)
    # the geometric and intensity draws come first and are the same with the jitter on
    both = dataclasses.replace(base, gamma=0.0, blur=0.0, noise=1e-9)
    assert torch.allclose(both(x, gen(), size=32), base(x, gen(), size=32), atol=1e-6)


def test_random_erasing_fills_one_rectangle_with_noise_and_leaves_the_other_draws():
    from pneumocxr.datasets import ERASE_AREA
    x = torch.full((64, 1, 32, 32), 0.5)
    only = dict(scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0, rotation=0.0, brightness=0.0,
                contrast=0.0)
    gen = lambda: torch.Generator().manual_seed(4)   # noqa: E731
    e = Augment.from_params({**only, "erase": 0.5})(x, gen())
    assert torch.equal(e, Augment.from_params({**only, "erase": 0.5})(x, gen()))
    changed = (e != 0.5).flatten(1)
    erased = changed.any(dim=1)
    assert 16 < int(erased.sum()) < 48          # about half the images
    for img, ch in zip(e[erased], changed[erased]):
        rows, cols = ch.view(32, 32).any(dim=1), ch.view(32, 32).any(dim=0)
        # one axis-aligned rectangle, of the configured area (to a pixel's rounding)
        assert int(ch.sum()) >= 0.9 * int(rows.sum()) * int(cols.sum())
        assert int(rows.sum()) * int(cols.sum()) <= (ERASE_AREA[1] + 0.1) * 32 * 32
        assert img.min() >= 0 and img.max() <= 1
    everyone = Augment.from_params({**only, "erase": 1.0})(x, gen())
    assert bool((everyone != 0.5).flatten(1).any(dim=1).all())
    # the geometric and intensity draws come first and are the same with erasing on
    base = Augment.from_params()
    y = to_float(torch.from_numpy(synthetic_images(np.array([0, 1, 2, 1]), 40))[:, None])
    tiny = dataclasses.replace(base, erase=1e-12)
    assert torch.equal(tiny(y, gen(), size=32), base(y, gen(), size=32))


def test_gaussian_blur_sigma_zero_is_identity_and_a_constant_image_stays_constant():
    x = torch.rand(3, 1, 20, 20)
    assert torch.allclose(gaussian_blur(x, torch.zeros(3), 4), x, atol=1e-6)
    c = torch.full((2, 1, 12, 12), 0.3)
    assert torch.allclose(gaussian_blur(c, torch.tensor([1.0, 3.0]), 9), c, atol=1e-6)


def test_augment_from_params_fills_the_schema_defaults_and_refuses_bad_values():
    aug = Augment.from_params({"hflip": 1.0})
    assert aug == dataclasses.replace(Augment.from_params(), hflip=1.0)
    assert isinstance(aug, Augment) and isinstance(aug.scale, tuple)
    with pytest.raises(ParamsError, match=r"train\.augment\.scale: \[min, max\] with min <= max"):
        Augment.from_params({"scale": [0.9, 0.5]})
    with pytest.raises(ParamsError, match=r"train\.augment\.rotation"):
        Augment.from_params({"rotation": 200})
    with pytest.raises(ParamsError, match=r"train\.augment\.blur"):
        Augment.from_params({"blur": -1})


def test_array_dataset_validates_and_describes_itself():
    ds = ArrayDataset(np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 1, 1]), ["normal", "pneumonia"])
    assert "n=4" in repr(ds) and "'pneumonia': 3" in repr(ds)
    x, y = ds[1]
    assert x.shape == (1, 8, 8) and x.dtype == torch.uint8 and y == 1
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(np.zeros((4, 8, 8), np.float32), np.zeros(4), ["a", "b"])
    with pytest.raises(ValueError, match="labels must lie"):
        ArrayDataset(np.zeros((2, 8, 8), np.uint8), np.array([0, 2]), ["a", "b"])


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_data_smoke_run_learns_pneumonia(kermany_root, tmp_path):
    """CI floor on the real shared data: ~500 train images, 2 epochs, 64 px, from scratch.

    Catches a broken pipeline (labels, preprocessing, training, evaluation), not a good model:
    a run that learns anything reaches a held-out AUROC well above the floor.
    """
    from pneumocxr.config import complete
    from pneumocxr.data.prepare import prepare

    processed = tmp_path / "processed"
    data = complete("data", {"source": "kermany", "root": str(kermany_root), "split_seed": 42})
    prepare("kermany", kermany_root, processed, tmp_path / "reports",
            prepare_params={"resize": 73, "crop": 64, "variants": ["plain"]},
            split_seed=data["split_seed"], val_fraction=data["val_fraction"],
            min_side=data["min_side"], max_pixels=data["max_pixels"], threads=1,
            progress=False)
    metrics = smoke_run(processed, tmp_path / "work", n_train=500, epochs=2, input_size=64)
    test = metrics["test"]
    assert test["n_images"] == 524  # the whole dev test split, not a subsample
    assert test["auroc"]["value"] >= 0.80
    assert test["auroc"]["ci_low"] <= test["auroc"]["value"] <= test["auroc"]["ci_high"]
    assert metrics["val"]["auroc"]["value"] >= 0.80


def test_fp16_needs_cuda_and_auto_never_picks_it_on_cpu():
    from pneumocxr.inference import autocast_dtype
    from pneumocxr.train import resolve_precision

    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    assert resolve_precision("auto", cpu) in ("fp32", "bf16")
    assert autocast_dtype("fp16", cpu) is torch.float16
    assert TrainSettings.for_task({"precision": "fp16"}, "binary").precision == "fp16"


def test_loss_scaled_step_matches_the_plain_step_when_nothing_overflows(processed):
    """The fp16 path's GradScaler (exercised here on CPU in fp32) unscales before stepping."""
    from pneumocxr.models import create_model, default_normalization
    from pneumocxr.train import train_one_epoch

    train, _ = _datasets(processed)
    weights = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0)):
        torch.manual_seed(0)
        model = create_model("resnet18", 2, in_chans=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        train_one_epoch(model, train, torch.nn.CrossEntropyLoss(), opt,
                        normalization=default_normalization(1), batch_size=8,
                        generator=torch.Generator().manual_seed(0), input_size=32, scaler=scaler)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-5)
