"""Embedding extraction and storage, t-SNE maps, separability and the tsne_knn stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pneumocxr import embed, knn, tsne_knn
from pneumocxr.checkpoint import save_checkpoint
from pneumocxr.config import ParamsError
from pneumocxr.settings import KnnSettings, TsneSettings

NORM = {"mean": [0.5], "std": [0.25]}


class TinyNet(nn.Module):
    """A classifier with the timm-style interface every pneumocxr model exposes."""

    def __init__(self, num_classes: int = 2, in_chans: int = 1, dim: int = 6):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(dim, num_classes)
        self.in_chans = in_chans

    def forward_features(self, x):
        if x.shape[1] != self.in_chans:
            raise RuntimeError(f"expected {self.in_chans} channels, got {x.shape[1]}")
        return torch.relu(self.conv(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class MeanNet(nn.Module):
    """Embedding = per-channel mean of the normalised input: hand-computable."""

    def forward_features(self, x):
        return x

    def forward_head(self, x, pre_logits: bool = False):
        return x.mean(dim=(2, 3)) if pre_logits else x.mean(dim=(1, 2, 3))[:, None].repeat(1, 2)


def _images(n: int, size: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size), dtype=np.uint8)


def _write_processed(root, sizes=None, size=12, data_source="demo"):
    """A tiny prepared-data folder in the format of pneumocxr.data.arrays."""
    sizes = sizes or {"train": 9, "val": 6, "test": 6}
    subtypes = ["normal", "bacteria", "virus"]
    rows = []
    (root / "plain").mkdir(parents=True)
    for s, (split, n) in enumerate(sizes.items()):
        np.save(root / "plain" / f"{split}.npy", _images(n, size, seed=s))
        for i in range(n):
            sub = subtypes[i % 3]
            rows.append(dict(split=split, index=i, file=f"{split}/{sub}_{i}.jpeg",
                             official_split=split,
                             label="NORMAL" if sub == "normal" else "PNEUMONIA",
                             subtype=sub, patient=f"{split}-p{i // 2}", sha256="0" * 64,
                             orig_width=size, orig_height=size))
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    (root / "info.json").write_text(json.dumps({"data_source": data_source}))
    return root


# --------------------------------------------------------------------------------------------
# extraction


def test_extract_embeddings_gives_float32_n_by_d_and_the_head_logits_of_the_same_pass():
    torch.manual_seed(0)
    model = TinyNet(num_classes=3, dim=6)
    images = _images(7)
    emb, logits = embed.extract_embeddings(model, images, batch_size=3, normalization=NORM,
                                           progress=False, return_logits=True)
    assert emb.shape == (7, 6) and emb.dtype == np.float32
    assert logits.shape == (7, 3) and logits.dtype == np.float32
    x = (torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.25
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(emb, model.forward_head(model.forward_features(x),
                                                           pre_logits=True).numpy(), atol=1e-6)


def test_extract_embeddings_do_not_depend_on_the_batch_size():
    torch.manual_seed(0)
    model = TinyNet()
    images = _images(10)
    a = embed.extract_embeddings(model, images, batch_size=1, normalization=NORM, progress=False)
    b = embed.extract_embeddings(model, images, batch_size=10, normalization=NORM, progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_extract_embeddings_in_channels_last_agree_with_the_default_layout():
    torch.manual_seed(0)
    model = TinyNet(dim=8)
    images = _images(5, size=16)
    a = embed.extract_embeddings(model, images, normalization=NORM, progress=False)
    b = embed.extract_embeddings(model, images, normalization=NORM, progress=False,
                                 channels_last=True)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_extract_embeddings_scale_to_unit_range_then_apply_checkpoint_mean_and_std():
    images = np.stack([np.full((4, 4), 255, np.uint8), np.zeros((4, 4), np.uint8)])
    emb = embed.extract_embeddings(MeanNet(), images, normalization=NORM, progress=False)
    np.testing.assert_allclose(emb, [[2.0], [-2.0]])  # (1 - .5) / .25, (0 - .5) / .25


def test_extract_embeddings_repeat_gray_images_to_the_models_channels():
    images = np.full((2, 4, 4), 51, np.uint8)  # 0.2 after scaling
    norm = {"mean": [0.0, 0.1, 0.2], "std": [1.0, 0.5, 0.1]}
    emb = embed.extract_embeddings(MeanNet(), images, normalization=norm, in_chans=3,
                                   progress=False)
    np.testing.assert_allclose(emb, [[0.2, 0.2, 0.0]] * 2, atol=1e-6)
    with pytest.raises(ValueError, match="normalization mean has 2 values"):
        embed.extract_embeddings(MeanNet(), images, normalization={"mean": [0, 0], "std": 1},
                                 in_chans=3, progress=False)


def test_extract_embeddings_run_in_eval_mode_without_grad_and_restore_the_mode():
    torch.manual_seed(0)
    model = TinyNet()
    model.train()
    images = _images(4)
    a = embed.extract_embeddings(model, images, normalization=NORM, progress=False)
    b = embed.extract_embeddings(model, images, normalization=NORM, progress=False)
    np.testing.assert_array_equal(a, b)  # dropout is off: eval mode
    assert model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 8, 8), np.float32), "uint8 array"),
    (np.zeros((2, 1, 8, 8), np.uint8), r"\(N, H, W\)"),
    (np.zeros((0, 8, 8), np.uint8), "no images"),
])
def test_extract_embeddings_reject_inputs_that_are_not_prepared_arrays(images, message):
    with pytest.raises(ValueError, match=message):
        embed.extract_embeddings(TinyNet(), images, normalization=NORM, progress=False)


def test_extract_embeddings_reject_a_model_without_the_embedding_interface():
    with pytest.raises(ValueError, match="forward_features/forward_head"):
        embed.extract_embeddings(nn.Linear(2, 2), _images(2), normalization=NORM, progress=False)


# --------------------------------------------------------------------------------------------
# every registered architecture (pneumocxr.models)

models = pytest.importorskip("pneumocxr.models")


@pytest.mark.parametrize("arch", models.list_models())
def test_every_registered_architecture_gives_one_embedding_row_per_image(arch):
    torch.manual_seed(0)
    model = models.create_model(arch, num_classes=3, in_chans=1, weights=None)
    size = max(64, models.get_model_spec(arch).min_input_size)
    emb, logits = embed.extract_embeddings(model, _images(3, size=size), batch_size=2,
                                           normalization=models.default_normalization(1),
                                           progress=False, return_logits=True)
    assert emb.shape == (3, model.num_features) and emb.dtype == np.float32
    assert logits.shape == (3, 3)
    assert np.isfinite(emb).all()


def _checkpoint(path, task, arch="resnet18", input_size=32):
    from pneumocxr.datasets import TASKS

    torch.manual_seed(0)
    names = list(TASKS[task])
    model = models.create_model(arch, num_classes=len(names), in_chans=1, weights=None)
    meta = {"arch": arch, "task": task, "class_names": names, "in_chans": 1,
            "input_size": input_size, "normalization": models.default_normalization(1)}
    save_checkpoint(path, model.state_dict(), meta, kind="classifier")
    return model.eval(), meta


def test_run_embed_reads_the_checkpoint_and_matches_the_classifiers_own_predictions(tmp_path):
    from pneumocxr.inference import predict_logits

    processed = _write_processed(tmp_path / "processed", size=40)  # resized to 32 like training
    model, meta = _checkpoint(tmp_path / "models" / "three_class" / "resnet18" / "best.pt", "three_class")
    out = tmp_path / "results" / "embeddings.npz"
    embed.run_embed(tmp_path / "models" / "three_class" / "resnet18" / "best.pt", processed, out,
                    batch_size=4, device="cpu", progress=False, channels_last=False)
    emb = embed.load_embeddings(out)
    assert (emb.task, emb.arch, emb.dim) == ("three_class", "resnet18", model.num_features)
    assert emb.info["input_size"] == 32 and emb.data_source == "demo"
    test_images = np.load(processed / "plain" / "test.npy")
    expected = predict_logits(model, test_images, normalization=meta["normalization"],
                              input_size=32, batch_size=4)
    np.testing.assert_allclose(emb["test"].logits, expected, rtol=1e-4, atol=1e-4)


def test_run_embed_refuses_a_checkpoint_without_a_known_task(tmp_path):
    processed = _write_processed(tmp_path / "processed", size=32)
    model = models.create_model("resnet18", num_classes=2, in_chans=1, weights=None)
    meta = {"arch": "resnet18", "task": "binaryish", "class_names": ["normal", "pneumonia"],
            "in_chans": 1, "input_size": 32, "normalization": models.default_normalization(1)}
    save_checkpoint(tmp_path / "best.pt", model.state_dict(), meta, kind="classifier")
    with pytest.raises(ValueError, match="task 'binaryish' is not one of"):
        embed.run_embed(tmp_path / "best.pt", processed, tmp_path / "e.npz", batch_size=4,
                        channels_last=False, progress=False)
    assert not (tmp_path / "e.npz").exists()


# --------------------------------------------------------------------------------------------
# storage


def test_embed_splits_round_trip_keeps_ids_labels_subtypes_and_patients(tmp_path):
    processed = _write_processed(tmp_path / "processed")
    torch.manual_seed(0)
    model = TinyNet(num_classes=3)
    emb = embed.embed_splits(model, processed, task="three_class", arch="tiny", normalization=NORM,
                             batch_size=4, progress=False)
    path = embed.save_embeddings(emb, tmp_path / "out" / "embeddings.npz")
    loaded = embed.load_embeddings(path)
    assert (loaded.task, loaded.arch, loaded.data_source) == ("three_class", "tiny", "demo")
    assert loaded.class_names == ["normal", "bacteria", "virus"]
    assert loaded.info["normalization"] == NORM and loaded.dim == 6
    assert list(loaded.splits) == ["train", "val", "test"]
    test = loaded["test"]
    assert test.y.tolist() == [0, 1, 2, 0, 1, 2]
    assert test.file[1] == "test/bacteria_1.jpeg" and test.patient[5] == "test-p2"
    assert test.label.tolist() == ["NORMAL", "PNEUMONIA", "PNEUMONIA"] * 2
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(loaded[split].embeddings, emb[split].embeddings)
        np.testing.assert_array_equal(loaded[split].logits, emb[split].logits)
    np.testing.assert_array_equal(test.head_pred, test.logits.argmax(1))


def test_embed_splits_binary_task_uses_normal_vs_pneumonia_labels(tmp_path):
    processed = _write_processed(tmp_path / "processed")
    emb = embed.embed_splits(TinyNet(), processed, task="binary", arch="tiny",
                             normalization=NORM, splits=["val"], progress=False)
    assert emb["val"].y.tolist() == [0, 1, 1, 0, 1, 1]
    assert emb.class_names == ["normal", "pneumonia"]


def test_embed_splits_reject_a_model_whose_head_does_not_fit_the_task(tmp_path):
    processed = _write_processed(tmp_path / "processed")
    with pytest.raises(ValueError, match="2 outputs but task 'three_class' has 3 classes"):
        embed.embed_splits(TinyNet(num_classes=2), processed, task="three_class", arch="tiny",
                           normalization=NORM, splits=["val"], progress=False)


def test_embed_splits_refuse_the_three_class_task_on_data_without_subtypes(tmp_path):
    processed = _write_processed(tmp_path / "processed")
    meta = pd.read_csv(processed / "metadata.csv")
    meta["subtype"] = "unknown"
    meta.to_csv(processed / "metadata.csv", index=False)
    with pytest.raises(ValueError, match="no bacteria/virus subtypes"):
        embed.embed_splits(TinyNet(num_classes=3), processed, task="three_class", arch="tiny",
                           normalization=NORM, splits=["val"], progress=False)


def test_load_embeddings_names_the_stage_to_run_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the embed stage"):
        embed.load_embeddings(tmp_path / "embeddings.npz")


# --------------------------------------------------------------------------------------------
# t-SNE and separability


def test_tsne_map_is_identical_for_the_same_seed_and_differs_for_another():
    x = np.random.default_rng(0).normal(size=(60, 10)).astype(np.float32)
    kw = dict(perplexity=10, max_iter=250)
    a = tsne_knn.tsne_map(x, seed=3, **kw)
    b = tsne_knn.tsne_map(x, seed=3, **kw)
    c = tsne_knn.tsne_map(x, seed=4, max_points=40, **kw)
    assert a.coords.shape == (60, 2)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert a.kl_divergence == b.kl_divergence
    assert c.coords.shape == (40, 2) and len(np.unique(c.index)) == 40
    assert not np.array_equal(a.coords[c.index], c.coords)


def test_tsne_map_explains_a_perplexity_too_large_for_the_points():
    with pytest.raises(ValueError, match="lower embed.tsne.perplexity"):
        tsne_knn.tsne_map(np.zeros((20, 3), np.float32), perplexity=30)


def test_separability_is_higher_for_separated_clusters_than_for_mixed_ones():
    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    separated = rng.normal(size=(80, 5)) + 6 * y[:, None]
    mixed = rng.normal(size=(80, 5))
    s = tsne_knn.separability(separated, y)
    m = tsne_knn.separability(mixed, y)
    assert s["silhouette_euclidean"] > 0.5 > abs(m["silhouette_euclidean"])
    assert s["silhouette_cosine"] > m["silhouette_cosine"]
    assert tsne_knn.separability(separated, np.zeros(80))["silhouette_euclidean"] is None


# --------------------------------------------------------------------------------------------
# the tsne_knn stage


def _synthetic_set(n_train=90, n_val=30, n_test=45, data_source="demo"):
    rng = np.random.default_rng(0)
    names = ["normal", "bacteria", "virus"]
    splits = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        y = np.arange(n) % 3
        x = (rng.normal(size=(n, 16)) + 3 * np.eye(16)[y]).astype(np.float32)
        logits = (np.eye(3)[y] * 2 + rng.normal(size=(n, 3))).astype(np.float32)
        sub = np.array(names)[y]
        splits[split] = embed.SplitEmbeddings(
            split, x, logits, y, np.array([f"{split}/{i}.jpeg" for i in range(n)]),
            np.where(y == 0, "NORMAL", "PNEUMONIA"), sub,
            np.array([f"{split}-p{i // 3}" for i in range(n)]))
    return embed.EmbeddingSet("three_class", "tiny", names, data_source, splits)


def test_run_tsne_knn_writes_figures_index_and_metrics_with_data_source(tmp_path):
    path = embed.save_embeddings(_synthetic_set(), tmp_path / "embeddings.npz")
    out = {"tsne_png": tmp_path / "tsne.png", "confusion_png": tmp_path / "confusion.png",
           "index_path": tmp_path / "knn_index.npz", "metrics_path": tmp_path / "metrics.json"}
    tsne_knn.run_tsne_knn(path, seed=0, bootstrap=50,
                       tsne={"perplexity": 10, "max_iter": 250, "train_points": 40},
                       knn={"k": [1, 3, 5]}, **out)
    assert out["tsne_png"].stat().st_size > 0 and out["confusion_png"].stat().st_size > 0
    metrics = json.loads(out["metrics_path"].read_text())
    assert metrics["data_source"] == "demo"
    assert metrics["selection"]["k"] in (1, 3, 5)
    assert {c["metric"] for c in metrics["selection"]["candidates"]} == {"cosine", "euclidean"}
    assert metrics["knn"]["accuracy"] > 0.9  # well-separated synthetic clusters
    assert set(metrics["network_head"]["per_class"]) == {"normal", "bacteria", "virus"}
    assert sum(map(sum, metrics["knn"]["confusion_matrix"])) == 45
    assert metrics["separability"]["by_task_class"]["silhouette_euclidean"] > 0
    assert "bacteria_vs_virus" in metrics["separability"]
    assert [t["split"] for t in metrics["tsne"]] == ["test", "train"]
    index = knn.load_knn_index(out["index_path"])
    assert index.k == metrics["selection"]["k"] and len(index.files) == 90
    assert index.info["data_source"] == "demo"


def test_tsne_and_knn_params_are_checked_against_the_schema_naming_the_key(tmp_path):
    assert TsneSettings.from_params({"perplexity": 10}).max_iter >= 250   # schema default
    with pytest.raises(ParamsError, match=r"embed\.tsne\.max_iter: 100 is less than"):
        TsneSettings.from_params({"max_iter": 100})
    with pytest.raises(ParamsError, match=r"embed\.knn\.metrics\.0: 'manhattan' is not allowed"):
        KnnSettings.from_params({"metrics": ["manhattan"]})
    path = embed.save_embeddings(_synthetic_set(), tmp_path / "embeddings.npz")
    with pytest.raises(ParamsError, match=r"embed\.knn\.kk: unknown key"):
        tsne_knn.run_tsne_knn(path, seed=0, bootstrap=30, knn={"kk": [1]},
                              tsne_png=tmp_path / "t.png", confusion_png=tmp_path / "c.png",
                              index_path=tmp_path / "i.npz", metrics_path=tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_run_tsne_knn_is_deterministic_for_a_seed(tmp_path):
    path = embed.save_embeddings(_synthetic_set(), tmp_path / "embeddings.npz")
    runs = []
    for i in range(2):
        d = tmp_path / str(i)
        tsne_knn.run_tsne_knn(path, seed=5, bootstrap=30, tsne={"perplexity": 10, "max_iter": 250},
                           knn={"k": [1, 3]}, tsne_png=d / "t.png", confusion_png=d / "c.png",
                           index_path=d / "i.npz", metrics_path=d / "m.json")
        runs.append((d / "m.json").read_text())
    assert runs[0] == runs[1]
