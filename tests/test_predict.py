"""`pneumocxr predict` / `export`: tiny models written in tmp_path, real images when present."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumocxr import CLASS_NAMES_3, CLASS_NAMES_BINARY
from pneumocxr.models import ConvAutoencoder
from pneumocxr.checkpoint import atomic_save, load_checkpoint, save_checkpoint
from pneumocxr.cli import EXIT_SOME_FAILED, main
from pneumocxr.data.dicom import encode_dicom
from pneumocxr.data.preprocess import PreprocessConfig, preprocess
from pneumocxr.datasets import to_float
from pneumocxr.knn import build_index, save_knn_index
from pneumocxr.models import create_model, default_normalization, normalize
from pneumocxr.predict import (ModelDirError, expand_inputs, explain_files, load_predictor,
                               predict_files)
from pneumocxr.utils import write_json

SIZE = 32
PREP = {"resize": 40, "crop": SIZE, "clahe": {"clip_limit": 2.0, "tile_grid": 8}}


def _classifier(path: Path, task: str, names, seed: int, temperature: float = 1.5,
                **extra) -> None:
    """A classifier ``best.pt`` and, beside it, the ``calibration.json`` of its calibrate stage."""
    torch.manual_seed(seed)
    model = create_model("resnet18", len(names))
    meta = {"arch": "resnet18", "task": task, "class_names": list(names), "in_chans": 1,
            "input_size": SIZE, "normalization": default_normalization(1),
            "data_source": "kermany", "preprocess": {**PREP, "variant": "plain"}, **extra}
    save_checkpoint(path, model.state_dict(), meta, kind="classifier")
    write_json({"format": 1, "temperature": temperature,
                "operating_threshold": {"value": 0.5, "rule": "youden"}},
               path.parent / "calibration.json")


def _write_models(root: Path, *, knn_dim: int = 512) -> Path:
    models = root / "models"
    _classifier(models / "binary/resnet18/best.pt", "binary", CLASS_NAMES_BINARY, 0)
    _classifier(models / "three_class/resnet18/best.pt", "three_class", CLASS_NAMES_3, 1)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, knn_dim)).astype(np.float32)
    labels = np.arange(20) % 2
    files = [f"train/{'PNEUMONIA' if y else 'NORMAL'}/img{i}.jpeg" for i, y in enumerate(labels)]
    save_knn_index(build_index(emb, labels, files, class_names=CLASS_NAMES_BINARY, k=3,
                               metric="cosine", info={"arch": "resnet18", "task": "binary"}),
                   models / "binary/resnet18/knn_index.npz")
    torch.manual_seed(2)
    ae = ConvAutoencoder(SIZE, [4, 8], 8)
    meta = {"kind": "autoencoder", "model": ae.config(), "variant": "clahe", "best_epoch": 3,
            "val_mse": 0.01, "data_source": "kermany",
            "preprocess": {**PREP, "variant": "clahe"}}
    save_checkpoint(models / "autoencoder/best.pt", ae.state_dict(), meta, kind="autoencoder")
    (root / "anomaly").mkdir(parents=True)
    (root / "anomaly/metrics.json").write_text(json.dumps({
        "threshold": {"value": 0.3, "rule": "eer"},
        "score": {"method": "ssim", "aggregation": "topk", "fraction": 0.02, "label": "x"},
        "model": {"best_epoch": 3, "val_mse": 0.01}}))
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return _write_models(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def predictor(results):
    return load_predictor(results)


def _xray(seed: int = 0, h: int = 90, w: int = 110) -> np.ndarray:
    """A smooth chest-like grey image (no real data needed)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.default_rng(seed)
    img = 120 + 80 * np.sin(6 * x + seed) * np.cos(4 * y) + rng.normal(0, 8, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def _png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def test_prediction_matches_the_training_input_path(predictor, tmp_path):
    """p(pneumonia) is what the checkpoint's own preprocessing + model + temperature give."""
    img = _xray()
    rows = predict_files(predictor, [_png(tmp_path / "a.png", img)])
    r = rows[0]
    assert r.ok, r.error
    b = predictor.binary
    assert b.temperature == 1.5 and b.threshold == 0.5       # from calibration.json
    assert b.calibration_path == b.path.parent / "calibration.json"
    crop = preprocess(img, PreprocessConfig.from_params({"resize": 40, "crop": SIZE}),
                      clahe=False)
    x = normalize(to_float(torch.from_numpy(crop)[None, None], SIZE),
                  b.meta["normalization"])
    with torch.inference_mode():
        p = torch.softmax(b.model(x) / 1.5, dim=1)[0, 1].item()
    assert r.p_pneumonia == pytest.approx(p, abs=1e-6)
    assert r.label == ("PNEUMONIA" if p >= 0.5 else "NORMAL") and r.threshold == 0.5
    assert sum(r.probs_three_class.values()) == pytest.approx(1.0)
    assert r.label_three_class == max(r.probs_three_class, key=r.probs_three_class.get)
    assert len(r.knn_neighbours) == 3 and r.knn_distances == sorted(r.knn_distances)
    assert all(f.startswith("train/") for f in r.knn_neighbours)
    assert np.isfinite(r.anomaly_score) and r.anomaly_flag == (r.anomaly_score >= 0.3)


def test_predict_on_real_images(predictor, kermany_root):
    files = sorted((kermany_root / "test" / "NORMAL").glob("*.jpeg"))[:2] + \
        sorted((kermany_root / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
    rows = predict_files(predictor, files, batch_size=3)
    assert [r.file for r in rows] == [str(f) for f in files]
    for r in rows:
        assert r.ok, r.error
        assert 0.0 <= r.p_pneumonia <= 1.0 and r.width == 224 and r.height == 224
        assert r.label in ("NORMAL", "PNEUMONIA") and r.knn_label in ("NORMAL", "PNEUMONIA")
    # batching does not change the answer
    single = predict_files(predictor, files[:1], batch_size=1)[0]
    assert single.p_pneumonia == pytest.approx(rows[0].p_pneumonia, abs=1e-5)


def test_dicom_and_png_of_the_same_picture_get_the_same_answer(predictor, tmp_path,
                                                               kermany_root):
    """8-bit MONOCHROME2 and windowed 16-bit MONOCHROME1 DICOMs of a real X-ray."""
    path = sorted((kermany_root / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    gray = np.asarray(Image.open(path).convert("L"))
    png = _png(tmp_path / "x.png", gray)
    (tmp_path / "x8.dcm").write_bytes(encode_dicom(gray))
    stored = ((255 - gray.astype(np.uint16)) * 16 + 100).astype(np.uint16)
    (tmp_path / "x16.dcm").write_bytes(encode_dicom(
        stored, photometric="MONOCHROME1", window=(100 + 127.5 * 16, 255 * 16),
        voi_function="LINEAR_EXACT"))
    rows = predict_files(predictor, [png, path, tmp_path / "x8.dcm", tmp_path / "x16.dcm"])
    assert all(r.ok for r in rows), [r.error for r in rows]
    ref = rows[0]
    for r in rows[1:]:
        assert r.p_pneumonia == pytest.approx(ref.p_pneumonia, abs=1e-6)
        assert r.probs_three_class == pytest.approx(ref.probs_three_class, abs=1e-6)
        assert r.anomaly_score == pytest.approx(ref.anomaly_score, abs=1e-6)
        assert r.knn_neighbours == ref.knn_neighbours
    assert rows[3].mode == "DICOM MONOCHROME1 16-bit"


def test_every_kind_of_bad_file_gets_an_error_row_and_the_rest_is_predicted(predictor,
                                                                            tmp_path):
    good = _png(tmp_path / "good.png", _xray())
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(_xray()).save(buf, format="JPEG")
    (tmp_path / "cut.jpeg").write_bytes(buf.getvalue()[:400])
    _png(tmp_path / "tiny.png", _xray(h=20, w=20))
    Image.fromarray(_xray()).save(tmp_path / "pic.gif")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "multi.dcm").write_bytes(encode_dicom(_xray(), frames=2))
    inputs = [tmp_path / "empty.png", tmp_path / "notes.txt", tmp_path / "cut.jpeg", good,
              tmp_path / "tiny.png", tmp_path / "pic.gif", tmp_path / "missing.png",
              tmp_path / "nothing", tmp_path / "multi.dcm", tmp_path / "none*.png"]
    rows = predict_files(predictor, inputs)
    kinds = {Path(r.file).name: (r.error or "ok").split(":")[0] for r in rows}
    assert kinds == {"empty.png": "empty", "notes.txt": "not_an_image",
                     "cut.jpeg": "truncated", "good.png": "ok", "tiny.png": "too_small",
                     "pic.gif": "unsupported_format", "missing.png": "unreadable",
                     "nothing": "not_an_image", "multi.dcm": "unsupported_format",
                     "none*.png": "unreadable"}
    assert rows[3].ok and rows[3].p_pneumonia is not None


def test_expand_inputs_takes_folders_recursively_and_globs(tmp_path):
    (tmp_path / "a/b").mkdir(parents=True)
    for name in ("a/1.png", "a/b/2.JPG", "a/b/3.dcm", "a/skip.txt"):
        (tmp_path / name).write_bytes(b"x")
    got = [Path(p).relative_to(tmp_path).as_posix() for p, _ in
           expand_inputs([tmp_path / "a", str(tmp_path / "a/*.png")])]
    assert got == ["a/1.png", "a/b/2.JPG", "a/b/3.dcm"]   # duplicates from the glob dropped


def test_cli_writes_csv_and_json_and_exit_code_says_whether_any_failed(results, tmp_path,
                                                                       capsys):
    good = _png(tmp_path / "good.png", _xray())
    (tmp_path / "bad.png").write_bytes(b"junk")
    out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
    rc = main(["predict", str(good), str(tmp_path / "bad.png"), "--models", str(results),
               "--out", str(out_csv), "--out", str(out_json)])
    assert rc == EXIT_SOME_FAILED
    captured = capsys.readouterr()
    assert "good.png" in captured.out and "bad.png: not_an_image" in captured.err
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["ok"] for r in rows] == ["True", "False"] and rows[0]["label"] in \
        ("NORMAL", "PNEUMONIA")
    doc = json.loads(out_json.read_text())
    assert doc["n_failed"] == 1 and doc["models"]["binary"]["threshold"]["value"] == 0.5
    assert main(["predict", str(good), "--models", str(results), "--quiet"]) == 0


def test_missing_model_dir_gives_a_clear_message(tmp_path, capsys):
    assert main(["predict", "x.png", "--models", str(tmp_path / "nowhere")]) == 1
    assert "models folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="no trained classifier"):
        load_predictor(tmp_path / "empty")


def test_mismatched_pieces_are_refused(tmp_path):
    root = _write_models(tmp_path / "r1", knn_dim=64)
    with pytest.raises(ModelDirError, match="64-d index"):
        load_predictor(root)
    root = _write_models(tmp_path / "r2")
    metrics = json.loads((root / "anomaly/metrics.json").read_text())
    metrics["model"]["best_epoch"] = 7
    (root / "anomaly/metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ModelDirError, match="another autoencoder"):
        load_predictor(root)
    root = _write_models(tmp_path / "r3")
    shutil.copy(root / "models/three_class/resnet18/best.pt", root / "models/binary/resnet18/best.pt")
    with pytest.raises(ModelDirError, match="classes"):
        load_predictor(root)


def test_a_classifier_without_its_calibration_or_of_the_old_format_is_refused(tmp_path):
    root = _write_models(tmp_path / "r1")
    (root / "models/three_class/resnet18/calibration.json").unlink()
    with pytest.raises(ModelDirError, match=r"three_class/resnet18/calibration\.json: "
                                            r"calibration file not found; run the calibrate"):
        load_predictor(root)
    root = _write_models(tmp_path / "r2")
    write_json({"temperature": 1.5, "operating_threshold": {"value": 0.5}},
               root / "models/binary/resnet18/calibration.json")
    with pytest.raises(ModelDirError, match="not a calibration file of format 1"):
        load_predictor(root)
    root = _write_models(tmp_path / "r3")
    ckpt = load_checkpoint(root / "models/binary/resnet18/best.pt")
    # a best.pt of before the calibrate stage (format 1: threshold and temperature inside)
    atomic_save({"model": ckpt["model"], "meta": {**ckpt["meta"], "temperature": 1.5,
                 "operating_threshold": {"value": 0.5, "rule": "youden"}}},
                root / "models/binary/resnet18/best.pt")
    with pytest.raises(ModelDirError, match="checkpoint format 1"):
        load_predictor(root)


def test_optional_pieces_missing_leave_their_columns_empty(tmp_path):
    root = _write_models(tmp_path / "r")
    shutil.rmtree(root / "models/three_class")
    shutil.rmtree(root / "models/autoencoder")
    pred = load_predictor(root)
    assert len(pred.notes) == 2
    r = predict_files(pred, [_png(tmp_path / "a.png", _xray())])[0]
    assert r.ok and r.probs_three_class is None and r.anomaly_score is None
    assert r.knn_label is not None


def test_preprocessing_falls_back_to_info_json_or_stops(tmp_path):
    root = _write_models(tmp_path / "r")
    for rel in ("models/binary/resnet18/best.pt", "models/three_class/resnet18/best.pt",
                "models/autoencoder/best.pt"):
        ckpt = load_checkpoint(root / rel)
        del ckpt["meta"]["preprocess"]
        save_checkpoint(root / rel, ckpt["model"], ckpt["meta"], kind=ckpt["kind"])
    with pytest.raises(ModelDirError, match="--prepared"):
        load_predictor(root, prepared=tmp_path / "nowhere")
    prepared = tmp_path / "processed"
    prepared.mkdir()
    (prepared / "info.json").write_text(json.dumps({"data_source": "kermany", **PREP}))
    pred = load_predictor(root, prepared=prepared)
    assert pred.binary.preprocess == PreprocessConfig(40, SIZE, 2.0, 8)
    assert pred.anomaly.clahe and not pred.binary.clahe
    (prepared / "info.json").write_text(json.dumps({"data_source": "demo", **PREP}))
    with pytest.raises(ModelDirError, match="'demo' data"):
        load_predictor(root, prepared=prepared)


def test_explain_writes_one_overlay_per_good_image(predictor, tmp_path):
    files = [_png(tmp_path / "a.png", _xray(1)), _png(tmp_path / "b.png", _xray(2))]
    (tmp_path / "c.png").write_bytes(b"")
    rows = predict_files(predictor, files + [tmp_path / "c.png"])
    written = explain_files(predictor, rows, tmp_path / "explain")
    assert [p.name for p in written] == ["a.png", "b.png"]
    assert all(Image.open(p).size[0] > 500 for p in written)


def test_onnx_export_matches_pytorch_and_stale_exports_are_refused(results, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from pneumocxr.export import export_onnx

    root = tmp_path / "r"
    shutil.copytree(results, root)
    ckpt = root / "models/binary/resnet18/best.pt"
    report = export_onnx(ckpt)
    assert report["check"]["max_abs_diff_probabilities"] <= 1e-4
    files = [_png(tmp_path / f"{i}.png", _xray(i)) for i in range(3)]
    ref = predict_files(load_predictor(root), files)
    onnx_rows = predict_files(load_predictor(root, backend="onnx"), files)
    for a, b in zip(ref, onnx_rows):
        assert abs(a.p_pneumonia - b.p_pneumonia) <= 1e-4
        assert a.knn_neighbours == b.knn_neighbours
    _classifier(ckpt, "binary", CLASS_NAMES_BINARY, 5)      # retrained: export is stale
    with pytest.raises(ValueError, match="exported from another version"):
        load_predictor(root, backend="onnx")
