"""Anomaly stage: autoencoder training, scores, EER threshold, metrics, resume, end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from pneumocxr.anomaly import detect
from pneumocxr.anomaly import evaluate as ae_eval
from pneumocxr.anomaly import train as ae_train
from pneumocxr.anomaly.detect import choose_threshold
from pneumocxr.anomaly.scores import Forward, aggregate, create_score, ledoit_wolf, ssim_map
from pneumocxr.anomaly.train import fit_autoencoder
from pneumocxr.models import ConvAutoencoder
from pneumocxr.models import autoencoder_input as to_tensor
from pneumocxr.checkpoint import load_checkpoint, save_checkpoint
from pneumocxr.config import ParamsError, complete
from pneumocxr.settings import AutoencoderSettings, AutoencoderTrainSettings, ScoreSettings

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest on a shared CPU) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = {"input_size": 16, "channels": [4, 8], "latent_dim": 8, "variational": False}


def _write_prepared(root, n=10, size=20, seed=0, data_source="demo"):
    """A prepared-data folder (arrays.py layout) with striped 'normal' and hazy 'pneumonia'."""
    rng = np.random.default_rng(seed)
    yy = np.arange(size)[:, None].repeat(size, 1)
    ribs = (np.sin(yy / 1.5) > 0).astype(float)
    rows, arrays = [], {}
    for split in ("train", "val", "test"):
        imgs = []
        for i in range(2 * n):
            label = "NORMAL" if i < n else "PNEUMONIA"
            base = 0.3 + 0.4 * ribs if label == "NORMAL" else np.full((size, size), 0.6)
            img = np.clip(base + rng.normal(0, 0.05, (size, size)), 0, 1)
            imgs.append((img * 255).astype(np.uint8))
            rows.append({"split": split, "index": i, "file": f"{split}_{i}.jpeg",
                         "official_split": split, "label": label,
                         "subtype": "normal" if label == "NORMAL" else "bacteria",
                         "patient": f"{split}-p{i // 2}", "sha256": f"{split}{i}",
                         "orig_width": size, "orig_height": size})
        arrays[split] = np.stack(imgs)
    (root / "clahe").mkdir(parents=True)
    for split, arr in arrays.items():
        np.save(root / "clahe" / f"{split}.npy", arr)
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    (root / "info.json").write_text(json.dumps({"data_source": data_source}))
    return root


def _params(**over):
    p = {"model": dict(TINY), "train": {"epochs": 3, "batch_size": 4, "lr": 3e-3},
         "score": {"method": "latent_mahalanobis"},
         "evaluate": {"n_boot": 20, "n_examples": 2, "batch_size": 8}}
    for key, value in over.items():
        p[key] = {**p[key], **value}
    return p


# ----------------------------------------------------------------------------- model, training


def test_autoencoder_reconstructs_a_constant_image_better_after_a_few_steps():
    torch.manual_seed(0)
    model = ConvAutoencoder(**TINY)
    x = torch.full((8, 1, 16, 16), 0.8)
    before = ae_train.evaluate_loss(model, x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        ae_train.train_one_epoch(model, x, opt, batch_size=8, generator=gen)
    after = ae_train.evaluate_loss(model, x)
    assert after < 0.1 * before


def test_autoencoder_output_matches_input_shape_and_range():
    model = ConvAutoencoder(32, [4, 8, 16], 8, variational=True).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, 32, 32))
    assert out.shape == (3, 1, 32, 32)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert [f.shape[-1] for f in model.forward_features(torch.rand(1, 1, 32, 32))] == [16, 8, 4]


def test_input_size_not_divisible_by_depth_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible"):
        ConvAutoencoder(20, [4, 8, 16], 8)


def test_to_tensor_scales_uint8_and_resizes_to_input_size():
    imgs = np.full((2, 32, 32), 255, dtype=np.uint8)
    x = to_tensor(imgs, 16)
    assert x.shape == (2, 1, 16, 16) and torch.allclose(x, torch.ones_like(x))
    with pytest.raises(ValueError, match="N, H, W"):
        to_tensor(np.zeros((2, 3, 16, 16), dtype=np.uint8), 16)


def test_training_is_deterministic_for_a_seed():
    def run():
        torch.manual_seed(3)
        model = ConvAutoencoder(**TINY)
        x = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        res = fit_autoencoder(model, x, epochs=2, batch_size=4, seed=5, progress=False)
        return res["best_state"], [r["train_loss"] for r in res["history"]]

    (s1, h1), (s2, h2) = run(), run()
    assert h1 == h2
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


# ----------------------------------------------------------------------------- score parts


def test_aggregate_mean_max_and_topk_on_hand_made_maps():
    maps = torch.zeros(2, 1, 2, 5)
    maps[0, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])   # 10 values, sum 20
    maps[1, 0, 1] = torch.tensor([5.0, 5.0, 0.0, 0.0, 0.0])
    assert aggregate(maps, "mean").tolist() == pytest.approx([2.0, 1.0])
    assert aggregate(maps, "max").tolist() == pytest.approx([10.0, 5.0])
    # top 20% of 10 locations = the 2 largest
    assert aggregate(maps, "topk", 0.2).tolist() == pytest.approx([7.0, 5.0])
    # a tiny fraction still takes one location
    assert aggregate(maps, "topk", 0.001).tolist() == pytest.approx([10.0, 5.0])
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(maps, "median")


def _fwd(x, recon, code=None, feats=None):
    code = torch.zeros(len(x), 2) if code is None else code
    return Forward(x, recon, code, feats or [x])


def test_reconstruction_errors_are_zero_for_a_perfect_reconstruction_and_see_lost_edges():
    x = torch.zeros(1, 1, 16, 16)
    x[..., 8:] = 1.0                                   # a sharp vertical edge
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    for kind in ("mse", "ssim", "gradient"):
        scorer = create_score(kind, aggregation="mean")
        assert float(scorer.score(_fwd(x, x))) == pytest.approx(0.0, abs=1e-6)
        assert float(scorer.score(_fwd(x, blurred))) > 1e-3
    # mse on a hand-made pair: error 0.5 on half of the pixels -> mean 0.125
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2] = 0.5
    assert float(create_score("mse").score(_fwd(half, torch.zeros_like(half)))) == 0.125


def test_ssim_of_an_image_with_itself_is_one_and_drops_with_noise():
    x = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim_map(x, x), torch.ones_like(x), atol=1e-5)
    noisy = (x + 0.3 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert float(ssim_map(x, noisy).mean()) < 0.95


def test_ledoit_wolf_matches_scikit_learn_batched():
    x = torch.randn(3, 40, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, cov, shrink = ledoit_wolf(x)
    for i in range(3):
        ref_cov, ref_shrink = sklearn_ledoit_wolf(x[i].numpy())
        np.testing.assert_allclose(cov[i].numpy(), ref_cov, atol=1e-12)
        assert float(shrink[i]) == pytest.approx(ref_shrink)
        np.testing.assert_allclose(mean[i].numpy(), x[i].mean(0).numpy())


def test_latent_mahalanobis_scores_codes_far_from_the_normal_ones_higher():
    gen = torch.Generator().manual_seed(0)
    normal_codes = torch.randn(200, 4, generator=gen) * torch.tensor([1.0, 1.0, 0.1, 0.1])
    dummy = torch.zeros(200, 1, 4, 4)
    scorer = create_score("latent_mahalanobis").fit([_fwd(dummy, dummy, normal_codes)])
    # same Euclidean distance from the mean, but along a direction normals barely vary in
    probe = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    s = scorer.score(_fwd(dummy[:3], dummy[:3], probe))
    assert s[1] > 3 * s[0] > 0 and s[2] < s[0]
    knn = create_score("latent_knn", k=3).fit([_fwd(dummy, dummy, normal_codes)])
    far = knn.score(_fwd(dummy[:2], dummy[:2], torch.tensor([[0.0] * 4, [5.0] * 4])))
    assert far[1] > far[0]


def test_feature_stats_flag_feature_maps_with_less_structure_than_normal():
    gen = torch.Generator().manual_seed(0)
    # normal images: filter responses with spread ~1 (structure everywhere)
    normal = [torch.randn(50, 4, 8, 8, generator=gen) * (1 + 0.1 * torch.rand(50, 4, 1, 1,
                                                                            generator=gen))]
    x = torch.zeros(50, 1, 8, 8)
    scorer = create_score("feature_stats", levels=[0]).fit([_fwd(x, x, feats=normal)])
    typical = torch.randn(1, 4, 8, 8, generator=gen)
    hazy = 0.3 * torch.randn(1, 4, 8, 8, generator=gen)        # the same, washed out
    harsh = 3.0 * torch.randn(1, 4, 8, 8, generator=gen)       # over-structured: also unusual
    s = [float(scorer.score(_fwd(x[:1], x[:1], feats=[f]))) for f in (typical, hazy, harsh)]
    assert s[1] > 2 * s[0] and s[2] > 2 * s[0]


def test_patch_density_map_points_at_the_deviating_position():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(100, 3, 4, 4, generator=gen)
    x = torch.zeros(100, 1, 8, 8)
    scorer = create_score("patch_mahalanobis", level=0, aggregation="max")
    scorer.fit([_fwd(x, x, feats=[feats])])
    probe = torch.zeros(1, 3, 4, 4)
    probe[0, :, 1, 2] = 6.0
    amap = scorer.map(_fwd(x[:1], x[:1], feats=[probe]))
    assert amap.shape == (1, 1, 4, 4)
    assert int(amap.flatten().argmax()) == 1 * 4 + 2


def test_unknown_score_or_aggregation_is_a_clear_error():
    with pytest.raises(ValueError, match="anomaly.score.method"):
        create_score("psnr")
    with pytest.raises(ValueError, match="aggregation"):
        create_score("mse", aggregation="median")


# ----------------------------------------------------------------------------- threshold, metrics


def test_eer_threshold_on_hand_made_scores_has_the_known_answer():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    t = choose_threshold(y, s)
    # at 0.6: one normal of four flagged (FPR 0.25), one pneumonia of four missed (FNR 0.25)
    assert t["value"] == pytest.approx(0.6)
    assert t["val_fpr"] == pytest.approx(0.25) and t["val_fnr"] == pytest.approx(0.25)
    assert t["gap"] == 0 and t["tolerance_met"]


def test_eer_tolerance_is_reported_unmet_when_no_threshold_balances_the_rates():
    y = np.array([0, 0, 1])
    s = np.array([0.1, 0.5, 0.4])      # any cut leaves FPR and FNR at least 0.5 apart
    t = choose_threshold(y, s, tolerance=5e-3)
    assert t["gap"] >= 0.5 and not t["tolerance_met"]
    with pytest.raises(ValueError, match="normal and pneumonia"):
        choose_threshold(np.zeros(4), np.arange(4.0))


def test_anomaly_metrics_have_cis_and_reweighted_precision():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99])
    m = detect.anomaly_metrics(y, s, 0.5, patients=np.arange(10) // 2, prevalence=0.5,
                                n_boot=50, seed=0)
    assert m["sensitivity"]["value"] == pytest.approx(5 / 6)
    assert m["specificity"]["value"] == pytest.approx(0.75)
    assert m["error_rate"]["value"] == pytest.approx(0.2)
    # at 50% prevalence: precision = sens / (sens + 1 - spec)
    assert m["precision_at_reference_prevalence"]["value"] == pytest.approx(
        (5 / 6) / (5 / 6 + 0.25))
    for key in ("auroc", "auprc", "f1", "precision"):
        assert m[key]["ci_low"] <= m[key]["value"] <= m[key]["ci_high"]
    assert m["n_patients"] == 5 and (m["tp"], m["fp"], m["tn"], m["fn"]) == (5, 1, 3, 1)


# ----------------------------------------------------------------------------- stages


def test_training_resumes_bitwise_identical_after_an_interruption(tmp_path):
    processed = _write_prepared(tmp_path / "processed")
    params = _params()
    full = ae_train.run_autoencoder_training(processed, tmp_path / "a/best.pt",
                                            tmp_path / "a/history.csv", params=params, seed=1,
                                            device="cpu", resume_root=tmp_path / "cache_a")

    class Stop(Exception):
        pass

    def stop_after_two(epoch, row):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        ae_train.run_autoencoder_training(processed, tmp_path / "b/best.pt",
                                         tmp_path / "b/history.csv", params=params, seed=1,
                                         device="cpu", resume_root=tmp_path / "cache_b",
                                         on_epoch_end=stop_after_two)
    assert not (tmp_path / "b/best.pt").exists()
    resumed = ae_train.run_autoencoder_training(processed, tmp_path / "b/best.pt",
                                               tmp_path / "b/history.csv", params=params,
                                               seed=1, device="cpu",
                                               resume_root=tmp_path / "cache_b")
    a = load_checkpoint(tmp_path / "a/best.pt", kind="autoencoder")
    b = load_checkpoint(tmp_path / "b/best.pt", kind="autoencoder")
    assert full["best_epoch"] == resumed["best_epoch"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["meta"] == b["meta"]
    ha = pd.read_csv(tmp_path / "a/history.csv")
    hb = pd.read_csv(tmp_path / "b/history.csv")
    # no clock time in the history: the whole file is the same
    assert list(ha.columns) == ["epoch", "train_loss", "val_loss", "best"]
    pd.testing.assert_frame_equal(ha, hb)
    assert (tmp_path / "a/history.csv").read_bytes() == (tmp_path / "b/history.csv").read_bytes()
    assert len(ha) == 3 and ha["best"].sum() == 1


def test_params_with_a_typo_or_a_bad_value_fail_naming_the_key():
    section = complete("anomaly", {"train": {"epochs": 3}})
    assert section["train"]["epochs"] == 3
    assert set(section) == {"model", "train", "score", "evaluate"}       # defaults filled
    assert AutoencoderTrainSettings.from_params({"epochs": 3}).epochs == 3
    with pytest.raises(ParamsError, match=r"anomaly\.score\.methd: unknown key"):
        ScoreSettings.from_params({"methd": "ssim"})
    with pytest.raises(ParamsError, match=r"anomaly\.score\.method: 'msx' is not allowed"):
        complete("anomaly", {"score": {"method": "msx"}})
    with pytest.raises(ParamsError, match=r"anomaly\.train\.lr: 0 is less than or equal to"):
        AutoencoderTrainSettings.from_params({"lr": 0})
    with pytest.raises(ParamsError, match=r"anomaly\.train\.progress: renamed; use progress"):
        complete("anomaly", {"train": {"progress": True}})
    for bad in (lambda: complete("anomaly", {"model": {"input_size": 100,
                                                       "channels": [8, 16, 32]}}),
                lambda: AutoencoderSettings.from_params({"input_size": 100,
                                                         "channels": [8, 16, 32]})):
        with pytest.raises(ParamsError, match=r"anomaly\.model\.input_size \(100\) must be "
                                              r"divisible by 2\*\*len\(anomaly\.model\.channels\)"):
            bad()
    with pytest.raises(ParamsError, match="encoder block 3 does not exist"):
        complete("anomaly", {"model": {"channels": [8, 16]}, "score": {"level": 3}})
    with pytest.raises(ParamsError, match=r"anomaly\.score\.window must be odd"):
        complete("anomaly", {"score": {"window": 20}})
    with pytest.raises(ParamsError, match=r"anomaly\.score\.window \(41\) is too large"):
        complete("anomaly", {"model": {"input_size": 16, "channels": [4, 8]},
                             "score": {"window": 41}})
    with pytest.raises(ParamsError, match=r"anomaly\.score\.stretches.*greater than the maximum"):
        complete("anomaly", {"score": {"stretches": [1.0, 3.0]}})
    with pytest.raises(ParamsError, match=r"anomaly\.score\.region: 'lungs' is not allowed"):
        complete("anomaly", {"score": {"region": "lungs"}})
    with pytest.raises(ParamsError, match=r"anomaly\.evaluate\.baseline"):
        complete("anomaly", {"evaluate": {"baseline": "patch_mahalanobis"}})


def test_training_without_normal_images_is_a_clear_error(tmp_path):
    processed = _write_prepared(tmp_path / "processed")
    meta = pd.read_csv(processed / "metadata.csv")
    meta["label"] = "PNEUMONIA"
    meta.to_csv(processed / "metadata.csv", index=False)
    with pytest.raises(ValueError, match="normal images"):
        ae_train.run_autoencoder_training(processed, tmp_path / "m.pt", tmp_path / "h.csv",
                                         params=_params(), device="cpu",
                                         resume_root=tmp_path / "cache")


@pytest.mark.parametrize("method", ["latent_mahalanobis", "patch_mahalanobis", "ssim"])
def test_evaluation_writes_metrics_scores_and_figures(tmp_path, method):
    processed = _write_prepared(tmp_path / "processed")
    params = _params(score={"method": method, "level": -1, "aggregation": "mean"})
    ae_train.run_autoencoder_training(processed, tmp_path / "best.pt", tmp_path / "history.csv",
                                     params=params, seed=0, device="cpu",
                                     resume_root=tmp_path / "cache")
    outputs = {"metrics": tmp_path / "out/metrics.json", "scores": tmp_path / "out/scores.csv",
               "reconstructions": tmp_path / "out/reconstructions.png",
               "histogram": tmp_path / "out/histogram.png", "roc": tmp_path / "out/roc.png",
               "score_state": tmp_path / "out/score_state.pt"}
    metrics = ae_eval.run_anomaly_evaluation(tmp_path / "best.pt", processed, outputs,
                                             params=params, seed=0, device="cpu")
    for path in outputs.values():
        assert path.is_file() and path.stat().st_size > 0
    saved = json.loads(outputs["metrics"].read_text())
    assert saved["data_source"] == "demo" and saved["score"]["method"] == method
    for key in ("error_rate", "precision", "sensitivity", "specificity", "f1", "auroc", "auprc",
                "precision_at_reference_prevalence", "f1_at_reference_prevalence"):
        assert set(saved["test"][key]) >= {"value", "ci_low", "ci_high"}
    t = saved["threshold"]
    assert {"value", "val_fpr", "val_fnr", "gap", "tolerance_met"} <= set(t)
    scores = pd.read_csv(outputs["scores"])
    assert set(scores["split"]) == {"val", "test"} and len(scores) == 40
    state = torch.load(outputs["score_state"], weights_only=True)
    assert state["score"]["method"] == method and state["threshold"]["value"] == t["value"]
    reloaded = create_score(**state["score"])
    reloaded.load_state_dict(state["state"])  # what predict does with it
    # the threshold came from val: recomputing the EER there gives it back
    val = scores[scores["split"] == "val"]
    assert choose_threshold((val["label"] == "PNEUMONIA").to_numpy(),
                            val["score"].to_numpy())["value"] == pytest.approx(t["value"])
    assert metrics["test"]["n"] == 20


def test_evaluation_rejects_a_classifier_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "clf.pt", {}, {"arch": "resnet18"}, kind="classifier")
    processed = _write_prepared(tmp_path / "processed")
    with pytest.raises(ValueError, match="kind 'classifier', expected 'autoencoder'"):
        ae_eval.run_anomaly_evaluation(tmp_path / "clf.pt", processed,
                                       {"metrics": tmp_path / "m.json"}, params=_params())
    # a best.pt written before checkpoints carried a format is refused, not misread
    torch.save({"model": {}, "meta": {"kind": "autoencoder"}}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="checkpoint format 1"):
        ae_eval.run_anomaly_evaluation(tmp_path / "old.pt", processed,
                                       {"metrics": tmp_path / "m.json"}, params=_params())
    assert not (tmp_path / "m.json").exists()


def test_evaluation_refuses_a_score_block_the_trained_model_lacks(tmp_path):
    """The evaluate stage gets anomaly.score without anomaly.model: the trained model's
    depth is checked when it is loaded."""
    processed = _write_prepared(tmp_path / "processed")
    params = _params(train={"epochs": 1})
    ae_train.run_autoencoder_training(processed, tmp_path / "best.pt", tmp_path / "history.csv",
                                     params={"model": params["model"], "train": params["train"]},
                                     device="cpu", resume_root=tmp_path / "cache")
    with pytest.raises(ValueError, match="encoder block 2 does not exist; the autoencoder has 2"):
        ae_eval.run_anomaly_evaluation(
            tmp_path / "best.pt", processed, {"metrics": tmp_path / "m.json"},
            params={"score": {"method": "feature_error", "level": 2},
                    "evaluate": params["evaluate"]}, device="cpu")
    assert not (tmp_path / "m.json").exists()


def test_acquisition_jitter_is_seeded_bounded_and_off_by_default():
    from pneumocxr.anomaly.train import acquisition_jitter
    from pneumocxr.settings import AcquisitionJitter

    off = AcquisitionJitter.from_params()
    assert not off.active
    on = AcquisitionJitter.from_params({"contrast": 0.3, "gamma": 0.3, "zoom": 0.1,
                                        "aspect": 0.1, "noise": 0.05})
    x = torch.rand(4, 1, 32, 32)
    a = acquisition_jitter(x, on, torch.Generator().manual_seed(3))
    b = acquisition_jitter(x, on, torch.Generator().manual_seed(3))
    c = acquisition_jitter(x, on, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    only_contrast = AcquisitionJitter.from_params({"contrast": 0.5})
    y = acquisition_jitter(x, only_contrast, torch.Generator().manual_seed(0))
    # contrast around each image's mean keeps the mean (before clipping, here inside [0, 1])
    assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.05)


def test_jittered_training_resumes_bitwise(tmp_path):
    processed = _write_prepared(tmp_path / "processed")
    params = _params(train={"epochs": 3, "augment": {"contrast": 0.2, "zoom": 0.1,
                                                     "noise": 0.02}})
    full = ae_train.run_autoencoder_training(processed, tmp_path / "a/best.pt",
                                             tmp_path / "a/history.csv", params=params, seed=1,
                                             device="cpu", resume_root=tmp_path / "ca")

    def stop(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ae_train.run_autoencoder_training(processed, tmp_path / "b/best.pt",
                                          tmp_path / "b/history.csv", params=params, seed=1,
                                          device="cpu", resume_root=tmp_path / "cb",
                                          on_epoch_end=stop)
    resumed = ae_train.run_autoencoder_training(processed, tmp_path / "b/best.pt",
                                                tmp_path / "b/history.csv", params=params,
                                                seed=1, device="cpu",
                                                resume_root=tmp_path / "cb")
    assert full["best_epoch"] == resumed["best_epoch"]
    a = load_checkpoint(tmp_path / "a/best.pt")["model"]
    b = load_checkpoint(tmp_path / "b/best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a/history.csv").read_bytes() == (tmp_path / "b/history.csv").read_bytes()


# ----------------------------------------------------------------------------- structure, region


def test_structure_score_ignores_brightness_and_contrast_but_sees_a_pattern_it_cannot_draw():
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    relit = 0.5 * x + 0.3                       # another exposure of the same anatomy
    lost = x.clone()
    lost[..., 8:24, 8:24] = 0.5                 # a region the reconstruction cannot follow
    structure = create_score("structure", aggregation="mean", window=7, sigma=1.0)
    ssim, mse = create_score("ssim", aggregation="mean"), create_score("mse")
    assert float(structure.score(_fwd(x, relit))) == pytest.approx(0.0, abs=2e-3)
    assert float(ssim.score(_fwd(x, relit))) > 0.05 and float(mse.score(_fwd(x, relit))) > 1e-3
    assert float(structure.score(_fwd(x, lost))) > 0.02   # a quarter of the image decorrelated


def test_region_counts_only_the_pixels_inside_the_fitted_mask():
    x = torch.zeros(2, 1, 8, 8)
    recon = x.clone()
    recon[0, 0, :, :2] = 1.0                  # image 0: error outside the region only
    recon[1, 0, 3:5, 3:5] = 1.0               # image 1: error inside it (4 of its 16 pixels)
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:6, 2:6] = True
    assert aggregate((x - recon) ** 2, "mean", region=region).tolist() == [0.0, 0.25]
    scorer = create_score("mse", aggregation="mean", region="lung_prior")
    assert scorer.needs_fit
    with pytest.raises(RuntimeError, match="fit the lung-field prior"):
        scorer.score(_fwd(x, recon))
    scorer.load_state_dict({"region_mask": region})   # what predict does with score_state.pt
    assert scorer.score(_fwd(x, recon)).tolist() == [0.0, 0.25]
    with pytest.raises(ValueError, match="fitted on"):
        scorer.score(_fwd(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)))
    with pytest.raises(ValueError, match="region"):
        create_score("mse", region="lungs")
    with pytest.raises(ValueError, match="odd"):
        create_score("structure", window=8)


def _demo_normals(n, size, seed):
    from pneumocxr.data.demo import render_chest_xray
    from pneumocxr.data.preprocess import apply_clahe

    return np.stack([apply_clahe(render_chest_xray(size, "normal", np.random.default_rng([seed, i]),
                                                   np.random.default_rng([seed, i, 1])))
                     for i in range(n)])


def test_lung_prior_of_demo_normals_covers_the_lung_fields_and_not_the_border():
    from pneumocxr.anomaly.scores import lung_prior

    mask = lung_prior(to_tensor(_demo_normals(12, 64, 3), 64), 0.3).numpy()
    assert 0.1 < mask.mean() < 0.6
    assert not mask[:2].any() and not mask[-2:].any()
    # two lungs: the middle column (mediastinum) is mostly outside
    assert mask[:, 30:34].mean() < mask.mean()
    with pytest.raises(ValueError, match="lung-field prior is empty"):
        bright = torch.ones(3, 1, 64, 64)
        bright[..., :8] = bright[..., -8:] = 0.0      # dark only in strips beside the 'chest'
        lung_prior(bright, 0.3)


def test_default_detector_ranks_a_synthetic_lesion_above_clean_demo_normals():
    """The default score (params.yaml) on an autoencoder of demo normals: each held-out normal
    scores higher with a dense lesion drawn into a lung than without it. Paired, because the
    spread of the score between demo normals (their noise and nuisances differ) is wider than
    a single lesion's effect at 64 px."""
    from pneumocxr.anomaly.scores import compute_scores, fit_score
    from pneumocxr.config import load_params

    size = 64
    train = to_tensor(_demo_normals(96, size, 1), size)
    held = _demo_normals(16, size, 2)
    lesion = held.astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    for i, img in enumerate(lesion):
        cx = size * (0.3 if i % 2 else 0.7)
        blob = np.exp(-(((xx - cx) / 9.0) ** 2 + ((yy - size * 0.55) / 12.0) ** 2))
        lesion[i] = np.clip(img + 150 * blob, 0, 255)
    torch.manual_seed(0)
    model = ConvAutoencoder(input_size=size, channels=[16, 32, 64], latent_dim=64)
    fit_autoencoder(model, train, epochs=30, batch_size=16, lr=3e-3, seed=0)
    score = load_params("params.yaml")["anomaly"]["score"]
    assert score["method"] == "structure" and score["region"] == "lung_prior"
    scorer = fit_score(create_score(**score), model, train)
    s_clean = compute_scores(scorer, model, to_tensor(held, size))
    s_lesion = compute_scores(scorer, model, to_tensor(lesion.astype(np.uint8), size))
    assert (s_lesion > s_clean).mean() >= 15 / 16
    # a lesion outside the lung fields does not count
    outside = held.astype(np.float32)
    for i, img in enumerate(outside):
        blob = np.exp(-(((xx - size * 0.5) / 5.0) ** 2 + ((yy - 3) / 3.0) ** 2))
        outside[i] = np.clip(img + 150 * blob, 0, 255)
    s_out = compute_scores(scorer, model, to_tensor(outside.astype(np.uint8), size))
    assert np.abs(s_out - s_clean).mean() < 0.2 * np.abs(s_lesion - s_clean).mean()


def test_evaluation_reports_the_study_baseline_beside_the_score(tmp_path):
    processed = _write_prepared(tmp_path / "processed")
    params = _params(score={"method": "ssim", "aggregation": "mean"},
                     evaluate={"baseline": "mse"})
    ae_train.run_autoencoder_training(processed, tmp_path / "best.pt", tmp_path / "history.csv",
                                     params=params, seed=0, device="cpu",
                                     resume_root=tmp_path / "cache")
    outputs = {"metrics": tmp_path / "metrics.json", "scores": tmp_path / "scores.csv",
               "score_state": tmp_path / "score_state.pt"}
    metrics = ae_eval.run_anomaly_evaluation(tmp_path / "best.pt", processed, outputs,
                                             params=params, seed=0, device="cpu")
    b = metrics["baseline"]["test"]
    assert b["method"] == "mse" and {"auroc", "sensitivity", "specificity"} <= set(b)
    scores = pd.read_csv(outputs["scores"])
    test = scores[scores["split"] == "test"]
    y = (test["label"] == "PNEUMONIA").to_numpy()
    from sklearn.metrics import roc_auc_score
    d = roc_auc_score(y, test["score"]) - roc_auc_score(y, test["baseline_score"])
    assert b["auroc_difference"]["value"] == pytest.approx(d)
    assert b["auroc"]["value"] == pytest.approx(roc_auc_score(y, test["baseline_score"]))
    det = detect.load_detector(tmp_path / "best.pt", outputs["score_state"])
    assert det.baseline[1] == "mse" and det.baseline[2] == pytest.approx(b["threshold"])
    off = _params(score={"method": "ssim", "aggregation": "mean"}, evaluate={"baseline": None})
    assert ae_eval.run_anomaly_evaluation(tmp_path / "best.pt", processed,
                                          {"metrics": tmp_path / "m2.json"}, params=off,
                                          seed=0, device="cpu")["baseline"] is None


def test_stretch_width_widens_or_narrows_the_anatomy_about_the_centre():
    from pneumocxr.anomaly.scores import stretch_width

    x = torch.zeros(1, 1, 8, 40)
    x[..., 16:24] = 1.0                       # a bar 8 px wide in the middle
    assert torch.equal(stretch_width(x, 1.0), x)
    wide, narrow = stretch_width(x, 1.25), stretch_width(x, 0.8)
    assert wide.shape == narrow.shape == x.shape
    assert float((wide[0, 0, 0] > 0.5).sum()) == 10 and float((narrow[0, 0, 0] > 0.5).sum()) < 8
    assert float(wide[0, 0, 0, 20]) == 1.0 and float(narrow[0, 0, 0, 20]) == 1.0   # centred
    assert float(narrow[0, 0, 0, 0]) == 0.0   # the edge column is repeated, not a new border


def test_stretched_scores_keep_each_images_lowest_score():
    from pneumocxr.anomaly.scores import compute_scores, stretch_width

    torch.manual_seed(0)
    model = ConvAutoencoder(**{k: v for k, v in TINY.items() if k != "variational"})
    x = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    plain = create_score("structure", aggregation="mean", window=5, sigma=1.0)
    multi = create_score("structure", aggregation="mean", window=5, sigma=1.0,
                         stretches=[0.8, 1.0, 1.25])
    s1, sm = compute_scores(plain, model, x, 4), compute_scores(multi, model, x, 4)
    each = [compute_scores(plain, model, stretch_width(x, f), 4) for f in (0.8, 1.0, 1.25)]
    assert np.allclose(sm, np.min(each, axis=0)) and np.all(sm <= s1 + 1e-12)
    assert "stretches" in multi.label
    with pytest.raises(ValueError, match="stretch"):
        create_score("structure", stretches=[3.0])
