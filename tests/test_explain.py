"""Explainability: occlusion and Grad-CAM against hand-computed answers, hooks released,
faithfulness and randomisation checks, the lung mask on real images, the shortcut probe, and
the explain stage end to end on a tiny prepared folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pneumocxr.data.preprocess import PreprocessConfig, preprocess
from pneumocxr.checkpoint import save_checkpoint
from pneumocxr.config import ParamsError
from pneumocxr.explain.faithfulness import (curve_auc, deletion_insertion, random_attribution,
                                            randomized_model, rank_correlation)
from pneumocxr.explain.gradcam import GradCAM
from pneumocxr.explain.lungmask import adjust_mask, attribution_share, lung_mask
from pneumocxr.explain.occlusion import Occlusion, window_starts
from pneumocxr.explain.pipeline import FIGURES, run_explain, select_images, template_mask
from pneumocxr.explain.shortcut import blank_border, border_probe
from pneumocxr.explain.targets import (ClassifierOutputSoftmaxTarget, ClassifierOutputTarget,
                                       ImageModel)
from pneumocxr.settings import ExplainSettings, LungMaskSettings
from pneumocxr.models import create_model, default_normalization


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class WeightedSum(nn.Module):
    """One output: sum(w * x) with w = 0, 1, 2, ... in raster order (hand-computable)."""

    def __init__(self, size: int):
        super().__init__()
        self.w = nn.Parameter(torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size))

    def forward(self, x):
        return (x * self.w).sum(dim=(1, 2, 3)).unsqueeze(1)


class PixelDetector(nn.Module):
    """Two logits (0, gain * x[r, c]): class 1 iff pixel (r, c) is bright."""

    def __init__(self, r: int, c: int, gain: float = 10.0):
        super().__init__()
        self.r, self.c = r, c
        self.gain = nn.Parameter(torch.tensor(gain))

    def forward(self, x):
        v = x[:, 0, self.r, self.c] * self.gain
        return torch.stack([torch.zeros_like(v), v], dim=1)


class TinyCNN(nn.Module):
    """trunk (conv) -> global average pool -> fc, like a registry classifier."""

    def __init__(self, trunk: nn.Module | None = None, channels: int = 2, classes: int = 2):
        super().__init__()
        self.trunk = trunk if trunk is not None else nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.pool(self.trunk(x)).flatten(1))


def first_output(out: torch.Tensor) -> torch.Tensor:
    return out[:, 0]


# ----------------------------------------------------------------------------- occlusion


def test_occlusion_of_a_weighted_sum_is_each_windows_weight_sum():
    # x = 1 everywhere, baseline 0: occluding a window drops the output by the sum of its
    # weights; 2x2 windows with stride 2 do not overlap on the 4x4 image.
    maps = Occlusion(WeightedSum(4)).attribute(torch.ones(1, 1, 4, 4), first_output,
                                               window=2, stride=2, baseline=0.0)
    expected = torch.tensor([[10, 10, 18, 18], [10, 10, 18, 18],
                             [42, 42, 50, 50], [42, 42, 50, 50]], dtype=torch.float32)
    assert torch.allclose(maps[0], expected)


def test_occlusion_averages_the_drops_of_overlapping_windows():
    maps = Occlusion(WeightedSum(4)).attribute(torch.ones(1, 1, 4, 4), first_output,
                                               window=2, stride=1, baseline=0.0)
    # window sums: (0,0) 10, (0,1) 14, (1,0) 26, (1,1) 30, (2,2) 50
    assert maps[0, 0, 0].item() == pytest.approx(10.0)
    assert maps[0, 1, 1].item() == pytest.approx((10 + 14 + 26 + 30) / 4)
    assert maps[0, 3, 3].item() == pytest.approx(50.0)


def test_occlusion_covers_the_edge_when_the_stride_does_not_divide_the_image():
    assert window_starts(8, 3, 2) == [0, 2, 4, 5]
    maps = Occlusion(WeightedSum(8)).attribute(torch.ones(1, 1, 8, 8), first_output,
                                               window=3, stride=2, baseline=0.0)
    assert torch.isfinite(maps).all()
    # pixel (7, 7) lies only in the flush window at (5, 5): weights 8r + c for r, c in 5..7
    assert maps[0, 7, 7].item() == pytest.approx(sum(8 * r + c for r in range(5, 8)
                                                     for c in range(5, 8)))


def test_occlusion_maps_the_softmax_drop_onto_the_windows_holding_the_evidence():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 5, 5] = 1.0
    maps = Occlusion(PixelDetector(5, 5)).attribute(x, window=2, stride=2, baseline=0.0)
    drop = 1.0 / (1.0 + math.exp(-10.0)) - 0.5   # p(class 1) before minus after occlusion
    expected = torch.zeros(8, 8)
    expected[4:6, 4:6] = drop
    assert torch.allclose(maps[0], expected, atol=1e-6)


def test_occlusion_map_does_not_depend_on_the_perturbation_batch_size():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(2, 1, 12, 12)
    maps = [Occlusion(model).attribute(x, window=4, stride=3, baseline=0.5, batch_size=b)
            for b in (1, 5, 100)]
    assert torch.allclose(maps[0], maps[1], atol=1e-6)
    assert torch.allclose(maps[0], maps[2], atol=1e-6)


def test_occlusion_rejects_a_window_larger_than_the_image():
    with pytest.raises(ValueError, match="larger than the image"):
        Occlusion(WeightedSum(4)).attribute(torch.ones(1, 1, 4, 4), first_output, window=5)


# ----------------------------------------------------------------------------- Grad-CAM


def test_gradcam_hook_is_released_after_the_with_block_even_on_error():
    model = TinyCNN().eval()
    with GradCAM(model) as cam:
        assert len(model.trunk._forward_hooks) == 1
        cam(torch.rand(2, 1, 8, 8))
    assert len(model.trunk._forward_hooks) == 0
    assert not cam.active
    with pytest.raises(RuntimeError, match="released"):
        cam(torch.rand(1, 1, 8, 8))
    with pytest.raises(ZeroDivisionError):
        with GradCAM(model):
            1 / 0
    assert len(model.trunk._forward_hooks) == 0


def test_gradcam_of_a_pooled_linear_head_is_the_class_activation_map():
    # trunk = identity, so A = x; with global average pooling and fc weights W the gradient is
    # W[c, k] / (h * w) everywhere, and Grad-CAM = ReLU(sum_k W[c, k] x_k) / (h * w).
    model = TinyCNN(trunk=nn.Identity(), channels=2).eval()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
        model.fc.bias.zero_()
    x = torch.rand(1, 2, 4, 4)
    with GradCAM(model) as cam:
        maps = {c: cam(x, ClassifierOutputTarget(c))[0] for c in (0, 1)}
    for c in (0, 1):
        w = model.fc.weight[c].detach()
        expected = torch.relu(w[0] * x[0, 0] + w[1] * x[0, 1]) / 16
        assert torch.allclose(maps[c], expected, atol=1e-6)


def test_gradcam_works_on_a_registry_classifier_and_leaves_no_gradients_behind():
    torch.manual_seed(0)
    model = ImageModel(create_model("resnet18", 2), default_normalization(1)).eval()
    with GradCAM(model) as cam:
        maps = cam(torch.rand(2, 1, 64, 64))
    assert maps.shape == (2, 64, 64) and (maps >= 0).all() and torch.isfinite(maps).all()
    assert all(p.grad is None for p in model.parameters())
    assert len(model.model.trunk._forward_hooks) == 0


def test_the_explained_model_equalizes_its_input_when_the_checkpoint_says_so():
    from pneumocxr.models import normalize
    torch.manual_seed(0)
    net = create_model("resnet18", 2).eval()
    norm = {**default_normalization(1), "equalize": True}
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(ImageModel(net, norm)(x), net(normalize(x, norm)))
        assert not torch.allclose(ImageModel(net, default_normalization(1))(x), net(normalize(x, norm)))


@pytest.mark.parametrize(
    "arch", ["resnet18", "alexnet", pytest.param("vgg16", marks=pytest.mark.slow)])
def test_gradcam_and_occlusion_run_on_every_registry_architecture(arch):
    torch.manual_seed(0)
    model = ImageModel(create_model(arch, 3), default_normalization(1)).eval()
    x = torch.rand(1, 1, 64, 64)
    with GradCAM(model) as cam:
        maps = cam(x)
    assert maps.shape == (1, 64, 64) and torch.isfinite(maps).all()
    occ = Occlusion(model).attribute(x, window=32, stride=32, batch_size=4)
    assert occ.shape == (1, 64, 64) and torch.isfinite(occ).all()


# ----------------------------------------------------------------------------- faithfulness


def test_curve_auc_is_the_trapezoid_mean_over_the_fractions():
    assert curve_auc(np.array([1.0, 0.0, 0.0])) == pytest.approx(0.25)
    assert curve_auc(np.array([1.0, 1.0])) == pytest.approx(1.0)


def test_deletion_insertion_reward_the_map_that_ranks_the_evidence_pixel_first():
    model = PixelDetector(5, 5).eval()
    x = torch.zeros(1, 8, 8)
    x[0, 5, 5] = 1.0
    good = np.zeros((8, 8))
    good[5, 5] = 1.0
    target = ClassifierOutputSoftmaxTarget(1)
    # insertion starts from a blurred copy (sigma 2 px), where the pixel is no longer bright
    r = deletion_insertion(model, x, good, target, steps=8, baseline=0.0, blur=0.25)
    # the first step removes the evidence pixel: p(class 1) falls from sigmoid(10) to 0.5
    assert r["deletion"][0] == pytest.approx(1 / (1 + math.exp(-10)))
    assert np.allclose(r["deletion"][1:], 0.5)
    assert r["insertion"][0] < 0.9 and np.allclose(r["insertion"][1:], r["deletion"][0])
    worst = deletion_insertion(model, x, -good, target, steps=8, baseline=0.0, blur=0.25)
    assert r["deletion_auc"] < worst["deletion_auc"]
    assert r["insertion_auc"] > worst["insertion_auc"]
    rand = deletion_insertion(model, x, random_attribution((8, 8), seed=0), target, steps=8,
                              baseline=0.0, blur=0.25)
    assert r["deletion_auc"] <= rand["deletion_auc"] <= worst["deletion_auc"]


def test_randomized_model_is_seeded_and_leaves_the_original_untouched():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = randomized_model(model, "head", seed=1)
    assert not torch.equal(head.fc.weight, model.fc.weight)
    assert torch.equal(head.trunk[0].weight, model.trunk[0].weight)
    full = randomized_model(model, "all", seed=1)
    assert not torch.equal(full.trunk[0].weight, model.trunk[0].weight)
    again = randomized_model(model, "all", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(),
                                                 again.state_dict().values()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="scope"):
        randomized_model(model, "layer3")


def test_rank_correlation_of_maps():
    a = np.arange(16.0).reshape(4, 4)
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert math.isnan(rank_correlation(a, np.zeros((4, 4))))


# ----------------------------------------------------------------------------- lung mask


def synthetic_chest(size: int = 64) -> np.ndarray:
    """Dark background, a bright trunk, two dark lung ellipses (known area)."""
    img = np.full((size, size), 20, np.uint8)
    cv2.rectangle(img, (int(0.1 * size), 0), (int(0.9 * size), size - 1), 190, -1)
    for cx in (0.33, 0.67):
        cv2.ellipse(img, (int(cx * size), int(0.5 * size)), (int(0.11 * size), int(0.28 * size)),
                    0, 0, 360, 60, -1)
    return img


def test_lung_mask_finds_both_lungs_and_not_the_background_of_a_synthetic_chest():
    img = synthetic_chest(64)
    mask = lung_mask(img)
    lungs = img == 60
    assert mask[:, :32].any() and mask[:, 32:].any()
    overlap = (mask & lungs).sum() / lungs.sum()
    assert overlap > 0.9
    assert not mask[img == 20].any()          # background outside the trunk
    assert (mask & ~lungs).sum() < 0.2 * lungs.sum()


def test_attribution_share_counts_positive_mass_only_and_adjusting_the_mask_changes_area():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    a = np.ones((8, 8))
    assert attribution_share(a, mask) == pytest.approx(16 / 64)
    a[~mask] = -5.0                           # negative evidence is left out
    assert attribution_share(a, mask) == pytest.approx(1.0)
    assert math.isnan(attribution_share(a, np.zeros((8, 8), bool)))
    assert adjust_mask(mask, -1).sum() < mask.sum() < adjust_mask(mask, 1).sum()


def test_lung_mask_covers_a_plausible_share_of_real_chest_xrays(kermany_root):
    cfg = PreprocessConfig.from_params({"resize": 256, "crop": 224})
    files = [p for label in ("NORMAL", "PNEUMONIA")
             for p in sorted((kermany_root / "test" / label).glob("*.jpeg"))[:10]]
    fractions, both_sides = [], []
    for f in files:
        gray = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        mask = lung_mask(preprocess(gray, cfg, clahe=True))
        fractions.append(mask.mean())
        both_sides.append(mask[:, :112].any() and mask[:, 112:].any())
    fractions = np.array(fractions)
    # two lung fields fill roughly a fifth to a half of a chest film cropped like these
    assert 0.15 <= np.median(fractions) <= 0.45, fractions
    assert np.mean((fractions > 0.05) & (fractions < 0.65)) >= 0.8, fractions
    assert np.mean(both_sides) >= 0.8


def test_template_mask_is_the_pixelwise_majority_of_the_found_masks():
    imgs = np.stack([synthetic_chest(64)] * 3)
    template, n = template_mask(imgs, LungMaskSettings.from_params())
    assert n == 3 and np.array_equal(template, lung_mask(imgs[0]))
    with pytest.raises(ValueError, match="no lung mask"):
        template_mask(np.full((2, 64, 64), 128, np.uint8), LungMaskSettings.from_params())


# ----------------------------------------------------------------------------- shortcut probe


class BandMean(nn.Module):
    """Binary logits (0, gain * (mean of a region - mid grey)) on normalised input."""

    def __init__(self, region: np.ndarray, normalization: dict):
        super().__init__()
        self.register_buffer("region", torch.from_numpy(region))
        self.mid = (128 / 255 - normalization["mean"][0]) / normalization["std"][0]
        self.gain = nn.Parameter(torch.tensor(50.0))

    def forward(self, x):
        v = x[:, 0][:, self.region].mean(dim=1)
        return torch.stack([torch.zeros_like(v), self.gain * (v - self.mid)], dim=1)


def _probe_data(signal: str, n: int = 40, size: int = 30):
    """Label 1: the signal region (border band or centre) is bright; elsewhere noise."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    images = rng.integers(0, 256, (n, size, size)).astype(np.uint8)
    band = np.zeros((size, size), bool)
    band[:3], band[-3:], band[:, :3], band[:, -3:] = True, True, True, True
    centre = np.zeros((size, size), bool)
    centre[10:20, 10:20] = True
    region = band if signal == "border" else centre
    for i, y in enumerate(labels):
        images[i][region] = 200 if y else 60
    return images, labels, region


@pytest.mark.parametrize("signal", ["border", "centre"])
def test_shortcut_probe_drop_is_large_for_a_border_reader_and_zero_for_a_centre_reader(signal):
    images, labels, region = _probe_data(signal)
    norm = default_normalization(1)
    model = BandMean(region, norm).eval()
    out = border_probe(model, images, labels, normalization=norm, bands=[0.1], value=128,
                       n_boot=50, seed=0)
    row = out["bands"][0]
    assert row["band_px"] == 3
    assert row["accuracy_plain"]["value"] == 1.0 and row["auroc_plain"]["value"] == 1.0
    if signal == "border":
        assert row["accuracy_drop"]["value"] >= 0.4
        assert row["auroc_drop"]["value"] >= 0.4
    else:
        assert row["accuracy_drop"]["value"] == 0.0
        assert row["auroc_drop"]["value"] == 0.0
        assert row["changed_predictions"]["value"] == 0.0


def test_blank_border_sets_only_the_band():
    img = np.zeros((1, 10, 10), np.uint8)
    out = blank_border(img, 0.2, value=7)
    assert (out[0, 2:8, 2:8] == 0).all()
    assert (out[0][~np.pad(np.ones((6, 6), bool), 2)] == 7).all()
    assert (img == 0).all()
    with pytest.raises(ValueError, match="band"):
        blank_border(img, 0.5)


# ----------------------------------------------------------------------------- the stage


def test_select_images_is_seeded_and_takes_n_per_class_and_correctness():
    labels = np.array([0] * 10 + [1] * 10)
    preds = np.array([0] * 8 + [1] * 2 + [1] * 9 + [0] * 1)
    a = select_images(labels, preds, 3, seed=5, class_names=("normal", "pneumonia"))
    b = select_images(labels, preds, 3, seed=5, class_names=("normal", "pneumonia"))
    pd.testing.assert_frame_equal(a, b)
    assert a.groupby("group").size().to_dict() == {
        "normal / correct": 3, "normal / wrong": 2, "pneumonia / correct": 3,
        "pneumonia / wrong": 1}
    assert ((a["label"] == a["pred"]) == a["correct"]).all()


def test_explain_params_out_of_range_are_clear_errors():
    with pytest.raises(ParamsError, match="explain.occlusion.window"):
        ExplainSettings.from_params({"occlusion": {"window": 0}})
    with pytest.raises(ParamsError, match="explain.windw: unknown key"):
        ExplainSettings.from_params({"windw": 3})
    with pytest.raises(ParamsError, match="explain.shortcut.bands"):
        ExplainSettings.from_params({"shortcut": {"bands": [0.6]}})


def _write_processed(root: Path, size: int = 32) -> Path:
    """Tiny prepared folder (plain + clahe) of synthetic chests; pneumonia has a bright blob."""
    rows = []
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 12)):
        labels = np.arange(n) % 3
        imgs = np.stack([synthetic_chest(size) for _ in range(n)]).astype(np.int16)
        imgs += rng.integers(-10, 10, imgs.shape).astype(np.int16)
        for i, y in enumerate(labels):
            if y:
                cv2.circle(imgs[i], (int(size * (0.33 if y == 1 else 0.67)), size // 2), 3, 230, -1)
        imgs = np.clip(imgs, 0, 255).astype(np.uint8)
        for variant in ("plain", "clahe"):
            (root / variant).mkdir(parents=True, exist_ok=True)
            np.save(root / variant / f"{split}.npy", imgs)
        for i, y in enumerate(labels):
            sub = ("normal", "bacteria", "virus")[y]
            rows.append({"split": split, "index": i, "file": f"{split}/{sub}_{i}.jpeg",
                         "official_split": split, "label": "NORMAL" if y == 0 else "PNEUMONIA",
                         "subtype": sub, "patient": f"{split}-{i // 2}", "sha256": f"{split}{i}",
                         "orig_width": size, "orig_height": size})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    (root / "info.json").write_text(json.dumps({"data_source": "demo"}))
    return root


@pytest.mark.slow   # ~10 s on an idle machine, most of it drawing the five figures
def test_explain_stage_writes_metrics_maps_and_figures(tmp_path):
    processed = _write_processed(tmp_path / "processed")
    torch.manual_seed(0)
    model = create_model("resnet18", 2)
    ckpt = tmp_path / "models" / "binary" / "resnet18" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    save_checkpoint(ckpt, model.state_dict(),
                    {"arch": "resnet18", "task": "binary", "in_chans": 1, "input_size": 32,
                     "class_names": ["normal", "pneumonia"],
                     "normalization": default_normalization(1)}, kind="classifier")
    figures = {name: tmp_path / "out" / f"{name}.png" for name in FIGURES}
    params = {"n_per_group": 2, "occlusion": {"window": 8, "stride": 8, "batch_size": 16},
              "faithfulness": {"steps": 4}, "template_images": 4, "share_n_per_class": 3,
              "randomization": {"scopes": ["head", "all"], "n_images": 2},
              "shortcut": {"bands": [0.1], "n_boot": 20}}
    metrics = run_explain(ckpt, processed, metrics_path=tmp_path / "out" / "metrics.json",
                          maps_path=tmp_path / "out" / "maps.npz", figures=figures,
                          params=params, seed=0, device="cpu")
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["data_source"] == "demo" and saved["task"] == "binary"
    n = saved["selection"]["n_images"]
    assert 1 <= n <= 8
    for method in ("occlusion", "gradcam", "random"):
        assert 0.0 <= saved["faithfulness"][method]["deletion_auc"]["mean"] <= 1.0
    assert set(saved["randomization"]["occlusion"]) == {"head", "all"}
    assert saved["shortcut"]["bands"][0]["band_px"] == 3
    share = saved["lung_share"]["selected"]["gradcam"]["template"]["base"]
    assert set(share) == {"normal", "pneumonia"}
    maps = np.load(tmp_path / "out" / "maps.npz")
    assert maps["occlusion"].shape == (n, 32, 32) and maps["lung_mask"].shape == (n, 32, 32)
    assert all(p.stat().st_size > 0 for p in figures.values())
    assert "timing" not in metrics   # timings go to the log: the outputs are byte-stable
    first = {f: (tmp_path / "out" / f).read_bytes() for f in ("metrics.json", "maps.npz")}
    run_explain(ckpt, processed, metrics_path=tmp_path / "out" / "metrics.json",
                maps_path=tmp_path / "out" / "maps.npz", figures=figures, params=params,
                seed=0, device="cpu")
    assert first == {f: (tmp_path / "out" / f).read_bytes() for f in first}


def test_task_auroc_matches_scikit_learn_with_ties_and_three_classes():
    from sklearn.metrics import roc_auc_score

    from pneumocxr.explain.shortcut import task_auroc

    rng = np.random.default_rng(0)
    y2 = rng.integers(0, 2, 60)
    p1 = np.round(rng.random(60), 1)                  # many ties
    p2 = np.stack([1 - p1, p1], axis=1)
    assert task_auroc(y2, p2) == pytest.approx(roc_auc_score(y2, p1))
    y3 = rng.integers(0, 3, 90)
    p3 = rng.dirichlet(np.ones(3), 90)
    assert task_auroc(y3, p3) == pytest.approx(
        roc_auc_score(y3, p3, multi_class="ovr", average="macro"))
    assert math.isnan(task_auroc(np.zeros(5, int), p2[:5]))
