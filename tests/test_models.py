"""Model registry: one forward API for every backbone, input-size and weight errors, stems."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from pneumocxr.checkpoint import atomic_save, load_checkpoint, save_checkpoint
from pneumocxr.models import (Classifier, WeightsUnavailableError, adapt_stem_weight,
                              check_input_size, create_model, get_model_spec, list_models,
                              load_model)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _save_best(model: Classifier, path, class_names=("normal", "pneumonia")):
    meta = {"arch": model.arch, "task": "binary" if len(class_names) == 2 else "three_class",
            "class_names": list(class_names), "in_chans": model.in_chans, "input_size": 32,
            "normalization": {"mean": [0.449], "std": [0.226]}}
    save_checkpoint(path, model.state_dict(), meta, kind="classifier")
    return path


def test_registry_lists_the_three_study_architectures():
    assert {"resnet18", "vgg16", "alexnet"} <= set(list_models())


@pytest.mark.parametrize("name,width", [("resnet18", 512), ("vgg16", 4096), ("alexnet", 4096)])
def test_every_model_gives_logits_and_pre_logits_embedding_through_the_same_api(name, width):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    size = get_model_spec(name).min_input_size
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        emb = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        full = model(x)
    assert feats.ndim == 4 and feats.shape[0] == 2
    assert emb.shape == (2, width) == (2, model.num_features)
    assert logits.shape == (2, 3) and model.num_classes == 3
    assert torch.equal(logits, full)
    assert torch.allclose(model.fc(emb), logits)


def test_alexnet_input_below_its_minimum_is_a_clear_value_error_not_a_crash_inside():
    assert get_model_spec("alexnet").min_input_size == 63
    with pytest.raises(ValueError, match="at least 63x63 pixels, got 62x62"):
        check_input_size("alexnet", 62)
    check_input_size("alexnet", 63)
    model = create_model("alexnet", 2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 63, 63)).shape == (1, 2)
        with pytest.raises(ValueError, match="alexnet needs input of at least 63x63"):
            model(torch.rand(1, 1, 62, 62))


def test_wrong_channel_count_is_rejected_with_the_expected_shape():
    model = create_model("resnet18", 2)
    with pytest.raises(ValueError, match=r"expects input \(N, 1, H, W\)"):
        model(torch.rand(1, 3, 64, 64))


def test_unknown_architecture_and_bad_class_count_name_the_fix():
    with pytest.raises(ValueError, match="available: .*resnet18"):
        create_model("resnet50")
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        create_model("resnet18", num_classes=1)


def test_one_channel_stem_from_pretrained_rgb_kernel_responds_like_a_replicated_gray_image():
    torch.manual_seed(0)
    rgb = torch.randn(8, 3, 5, 5)
    gray = adapt_stem_weight(rgb, 1, pretrained=True)
    assert gray.shape == (8, 1, 5, 5)
    img = torch.rand(2, 1, 16, 16)
    out_rgb = torch.nn.functional.conv2d(img.expand(-1, 3, -1, -1), rgb)
    out_gray = torch.nn.functional.conv2d(img, gray)
    assert torch.allclose(out_rgb, out_gray, atol=1e-5)


def test_grayscale_models_take_one_channel_without_tripling_the_input():
    model = create_model("resnet18", 2)
    assert model.trunk[0].in_channels == 1
    assert create_model("resnet18", 2, in_chans=3).trunk[0].in_channels == 3


def test_imagenet_weights_offline_raise_an_error_naming_the_cache_file_and_weights_none(
        tmp_path, monkeypatch):
    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no route to host (test)")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailableError) as err:
        create_model("resnet18", 2, weights="imagenet")
    msg = str(err.value)
    assert str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "weights: none" in msg
    assert isinstance(err.value, RuntimeError)


def test_imagenet_weights_in_the_hub_cache_load_without_network_with_summed_stem(
        tmp_path, monkeypatch):
    def no_network(url, dst, *args, **kwargs):
        raise AssertionError("the cached file must be used, not downloaded")

    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model = create_model("resnet18", 2, weights="imagenet")
    assert torch.allclose(model.trunk[0].weight, reference.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.trunk[4][0].conv1.weight, reference.layer1[0].conv1.weight)
    assert model.fc.out_features == 2


def test_binary_checkpoint_starts_a_three_class_model_with_its_trunk_and_a_new_head(tmp_path):
    torch.manual_seed(0)
    binary = create_model("resnet18", 2)
    path = _save_best(binary, tmp_path / "best.pt")
    three = create_model("resnet18", 3, weights=path)
    assert three.num_classes == 3
    sd_b, sd_3 = binary.state_dict(), three.state_dict()
    for key, value in sd_b.items():
        if not key.startswith("fc."):
            assert torch.equal(value, sd_3[key]), key


def test_checkpoint_of_another_architecture_is_rejected_naming_both(tmp_path):
    path = _save_best(create_model("resnet18", 2), tmp_path / "best.pt")
    with pytest.raises(ValueError, match="'resnet18' cannot initialise 'alexnet'"):
        create_model("alexnet", 3, weights=path)


def test_load_model_rejects_a_checkpoint_of_another_class_count_or_arch(tmp_path):
    path = _save_best(create_model("resnet18", 2), tmp_path / "best.pt")
    model, meta = load_model(path, arch="resnet18", class_names=["normal", "pneumonia"])
    assert not model.training and meta["arch"] == "resnet18"
    with pytest.raises(ValueError, match="differ from the task"):
        load_model(path, class_names=["normal", "bacteria", "virus"])
    with pytest.raises(ValueError, match="expected 'vgg16'"):
        load_model(path, arch="vgg16")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_checkpoint_metadata_round_trips_and_old_or_other_kind_files_are_refused(tmp_path):
    model = create_model("resnet18", 2)
    path = _save_best(model, tmp_path / "best.pt")
    ckpt = load_checkpoint(path, kind="classifier")
    assert ckpt["format"] == 2 and ckpt["kind"] == "classifier"
    assert ckpt["meta"]["normalization"] == {"mean": [0.449], "std": [0.226]}
    with pytest.raises(ValueError, match="kind 'classifier', expected 'autoencoder'"):
        load_checkpoint(path, kind="autoencoder")
    # a best.pt of format 1 ({"model", "meta"}, threshold inside) is named, not misread
    old = atomic_save({"model": model.state_dict(), "meta": {"arch": "resnet18"}},
                      tmp_path / "old.pt")
    for load in (load_checkpoint, load_model):
        with pytest.raises(ValueError, match="checkpoint format 1"):
            load(old)
    with pytest.raises(ValueError, match="checkpoint format 1"):
        create_model("resnet18", 3, weights=old)


def test_weights_none_as_python_none_builds_from_scratch():
    torch.manual_seed(3)
    a = create_model("resnet18", 2, weights=None)
    torch.manual_seed(3)
    b = create_model("resnet18", 2, weights="none")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_a_folded_classifier_gives_each_group_the_sum_of_its_probabilities():
    torch.manual_seed(0)
    model = create_model("resnet18", 3).eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        p3 = model(x).softmax(1)
        model.set_fold([[0], [1, 2]])
        p2 = model(x).softmax(1)
    assert model.num_classes == 2 and model.fc.out_features == 3
    torch.testing.assert_close(p2[:, 0], p3[:, 0])
    torch.testing.assert_close(p2[:, 1], p3[:, 1] + p3[:, 2])
    for bad in ([[0], [1]], [[0, 1, 2]], [[0], [1, 1, 2]], [[0], [], [1, 2]]):
        with pytest.raises(ValueError, match="must split the 3 head outputs"):
            model.set_fold(bad)


def test_a_folded_checkpoint_loads_as_the_binary_model_and_starts_a_fine_tune(tmp_path):
    torch.manual_seed(0)
    joint = create_model("resnet18", 3).eval()
    path = _save_best(joint, tmp_path / "joint.pt", ("normal", "bacteria", "virus"))
    ckpt = load_checkpoint(path)
    meta = {**ckpt["meta"], "class_names": ["normal", "pneumonia"],
            "head_classes": ["normal", "bacteria", "virus"], "fold": [[0], [1, 2]]}
    folded = tmp_path / "folded.pt"
    save_checkpoint(folded, ckpt["model"], meta, kind="classifier")
    model, _ = load_model(folded, class_names=["normal", "pneumonia"])
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        emb = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(emb, joint.forward_head(joint.forward_features(x),
                                                           pre_logits=True))
        torch.testing.assert_close(model(x).softmax(1)[:, 0], joint(x).softmax(1)[:, 0])
    assert "fold=((0,), (1, 2))" in repr(model)
    # a fine-tune from it keeps the trunk and, for three classes, the joint head itself
    again = create_model("resnet18", 3, weights=folded)
    assert torch.equal(again.fc.weight, joint.fc.weight) and again.fold is None
    meta["fold"] = [[0], [1]]
    save_checkpoint(folded, ckpt["model"], meta, kind="classifier")
    with pytest.raises(ValueError, match=r"folded.pt: fold \[\[0\], \[1\]\] must split"):
        load_model(folded)


def test_a_fold_whose_groups_do_not_match_the_classes_is_refused_naming_the_file(tmp_path):
    joint = create_model("resnet18", 3)
    meta = {"arch": "resnet18", "task": "binary", "class_names": ["normal", "pneumonia"],
            "head_classes": ["normal", "bacteria", "virus"], "fold": [[0], [1], [2]],
            "in_chans": 1, "input_size": 32, "normalization": {"mean": [0.449], "std": [0.226]}}
    path = save_checkpoint(tmp_path / "folded.pt", joint.state_dict(), meta, kind="classifier")
    with pytest.raises(ValueError, match=r"folded.pt: fold has 3 groups for the 2 classes"):
        load_model(path)


def test_equalize_is_the_same_under_an_increasing_intensity_map_and_keeps_the_range():
    from pneumocxr.models import equalize, normalize
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 67, (3, 1, 16, 16), generator=g).float() * 3 / 255   # levels 3 apart
    eq = equalize(x)
    assert eq.shape == x.shape and float(eq.min()) > 0 and float(eq.max()) < 1
    # exposure and gamma that keep the 8-bit levels apart: the same equalized image
    mapped = ((x * 255 * 1.2 + 10).clamp(0, 255) / 255) ** 0.8
    assert torch.allclose(equalize((mapped * 255).round() / 255), eq, atol=1e-6)
    # every image on its own: a constant image becomes 0.5, whatever its neighbours
    both = equalize(torch.cat([torch.full((1, 1, 16, 16), 0.3), x[:1]]))
    assert torch.all(both[0] == 0.5) and torch.equal(both[1:], eq[:1])
    # the order of values is kept (ties stay ties)
    flat, out = x[0].flatten(), eq[0].flatten()
    i, j = torch.argsort(flat)[:-1], torch.argsort(flat)[1:]
    assert torch.all(out[j] >= out[i])
    norm = {"mean": [0.5], "std": [0.25]}
    assert torch.equal(normalize(x, {**norm, "equalize": True}), (eq - 0.5) / 0.25)
    assert torch.equal(normalize(x, norm), (x - 0.5) / 0.25)


def test_a_cosine_head_reads_only_the_embedding_direction_and_round_trips(tmp_path):
    from pneumocxr.models import CosineHead
    torch.manual_seed(0)
    model = create_model("resnet18", 2, cosine_head=16.0).eval()
    assert isinstance(model.fc, CosineHead) and model.cosine_scale == 16.0
    emb = torch.randn(4, model.num_features)
    z = model.logits(emb)
    # the length of the embedding does not change the logits, which stay within the scale
    assert torch.allclose(model.logits(3.0 * emb), z, atol=1e-5)
    assert float(z.detach().abs().max()) <= 16.0 + 1e-4
    w = torch.nn.functional.normalize(model.fc.weight, dim=1)
    cos = torch.nn.functional.normalize(emb, dim=1) @ w.T
    assert torch.allclose(z, 16.0 * cos, atol=1e-5)
    # meta["cosine_head"] rebuilds the same head; a linear meta cannot load its weights
    path = _save_best(model, tmp_path / "best.pt")
    ckpt = load_checkpoint(path)
    save_checkpoint(path, ckpt["model"], {**ckpt["meta"], "cosine_head": 16.0},
                    kind="classifier")
    loaded, _ = load_model(path)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert isinstance(loaded.fc, CosineHead) and torch.equal(loaded(x), model(x))
    linear = _save_best(model, tmp_path / "as_linear.pt")
    with pytest.raises(ValueError, match=r"as_linear\.pt: weights do not fit a resnet18 with a "
                                         r"linear head"):
        load_model(linear)
    # a fine-tune from it keeps the trunk and gets a new head of the kind asked for
    three = create_model("resnet18", 3, weights=path, cosine_head=16.0)
    assert isinstance(three.fc, CosineHead) and three.fc.out_features == 3
    assert torch.equal(three.trunk[0].weight, model.trunk[0].weight)
    assert isinstance(create_model("resnet18", 2, weights=path).fc, torch.nn.Linear)
    with pytest.raises(ValueError, match="cosine_head must be 0"):
        create_model("resnet18", 2, cosine_head=-1.0)


def test_the_linear_head_default_draws_the_same_weights_as_before():
    torch.manual_seed(3)
    a = create_model("resnet18", 2)
    torch.manual_seed(3)
    net = torchvision.models.resnet18(weights=None, num_classes=2)
    assert torch.equal(a.fc.weight, net.fc.weight) and isinstance(a.fc, torch.nn.Linear)
