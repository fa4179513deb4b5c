"""The run summary and model card (pneumocxr.report) on hand-made stage outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pneumocxr import report


def ci(value, lo=None, hi=None):
    return {"value": value, "ci_low": value - 0.05 if lo is None else lo,
            "ci_high": value + 0.05 if hi is None else hi, "n_valid": 200}


def write_json(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def labelled_decisions(recalls: dict[int, tuple[int, int]], n_classes: int):
    """Labels and decisions with ``recalls[c] = (correct, total)``; wrong ones go to class c+1."""
    y, p = [], []
    for c, (correct, total) in recalls.items():
        y += [c] * total
        p += [c] * correct + [(c + 1) % n_classes] * (total - correct)
    return np.array(y), np.array(p)


def classifier_files(root: Path, task: str, source: str) -> dict[str, str]:
    names = ["normal", "pneumonia"] if task == "binary" else ["normal", "bacteria", "virus"]
    y = np.array([0] * 10 + [1] * 20 + ([2] * 10 if task == "three_class" else []))
    pred = y.copy()
    pred[:2] = 1          # two normals called pneumonia
    pred[10] = 0          # one pneumonia missed
    preds = pd.DataFrame({"split": "test", "patient": [f"p{i // 2}" for i in range(len(y))],
                          "label": y, "pred": pred})
    per_class = {n: {m: ci(0.8) for m in ("precision", "recall", "f1", "specificity")}
                 for n in names}
    metrics = {
        "task": task, "arch": "resnet18", "class_names": names, "data_source": source,
        "input_size": 64, "weights": "none" if task == "binary" else
        "results/models/binary/resnet18/best.pt", "best_epoch": 3, "temperature": 1.3,
        "operating_threshold": {"value": 0.42, "rule": "youden", "target_sensitivity": None},
        "n_boot": 50,
        "test": {"n_images": len(y), "n_patients": len(y) // 2,
                 "class_counts": {n: int((y == i).sum()) for i, n in enumerate(names)},
                 "accuracy": ci(0.9), "auroc": ci(0.95), "per_class": per_class,
                 "at_operating": {"threshold": 0.42, "sensitivity": ci(0.93),
                                  "specificity": ci(0.7)},
                 "calibration": {"ece_before": 0.12, "ece_after": 0.04}},
        "threshold_transfer": {"val_sensitivity": 0.97, "test_sensitivity": 0.93,
                               "val_specificity": 0.9, "test_specificity": 0.7},
    }
    base = root / "results"
    model = root / "models" / task / "best.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"checkpoint " + task.encode())
    preds_path = base / "classify" / task / "predictions.csv"
    preds_path.parent.mkdir(parents=True, exist_ok=True)
    preds.to_csv(preds_path, index=False)
    key = f"{task}_resnet18"
    return {
        f"classify_{key}": write_json(base / "classify" / task / "metrics.json", metrics),
        f"predictions_{key}": str(preds_path),
        f"model_{key}": str(model),
        f"explain_{key}": write_json(base / "explain" / task / "metrics.json", {"shortcut": {
            "n_images": len(y), "bands": [
                {"band": 0.1, "band_px": 6, "accuracy_plain": ci(0.9), "accuracy_blanked": ci(0.6),
                 "accuracy_drop": ci(0.3, 0.2, 0.4), "auroc_drop": ci(0.2),
                 "changed_predictions": ci(0.35)}]}}),
        f"embed_{key}": write_json(base / "embed" / task / "metrics.json", {
            "knn": {"accuracy_ci95": ci(0.85)}, "network_head": {"accuracy_ci95": ci(0.9)},
            "selection": {"k": 5, "metric": "cosine"}, "embedding_dim": 512}),
    }


def make_run(root: Path, source: str = "demo", tasks=("binary", "three_class")) -> dict[str, str]:
    """Every input of the summary stage, hand-made, in ``root``."""
    counts = {s: {"total": t, "label": {"NORMAL": n, "PNEUMONIA": t - n}, "subtype": {}}
              for s, t, n in (("train", 100, 25), ("val", 20, 5), ("test", 40, 10))}
    data = {"data_source": source, "root": "data/x", "n_images": 160, "has_subtypes": True,
            "counts": counts, "patients": {"train": 50, "val": 10, "test": 20},
            "stratification": {"by": "subtype", "max_gap_points": 1.2},
            "rejected": {"count": 1},
            "duplicates": {"n_groups": 2, "n_files": 5, "groups": [
                {"files": ["train/PNEUMONIA/a.jpeg", "train/PNEUMONIA/b.jpeg"]}]},
            "leakage": {"n_patients_in_two_splits": 0, "n_duplicate_groups_across_splits": 1},
            "params": {"resize": 73, "crop": 64, "clahe": {"clip_limit": 2.0, "tile_grid": 8},
                       "val_fraction": 0.1, "split_seed": 42}}
    processed = root / "processed"
    processed.mkdir(parents=True)
    pd.DataFrame({"split": ["train", "train", "val", "test"], "index": [0, 1, 0, 0],
                  "file": ["train/NORMAL/a.jpeg", "train/PNEUMONIA/b.jpeg",
                           "train/NORMAL/c.jpeg", "test/NORMAL/d.jpeg"],
                  "label": ["NORMAL", "PNEUMONIA", "NORMAL", "NORMAL"],
                  "subtype": ["normal", "bacteria", "normal", "normal"],
                  "patient": ["1", "2", "3", "4"], "sha256": ["aa", "bb", "cc", "dd"]}
                 ).to_csv(processed / "metadata.csv", index=False)
    y = np.array([0] * 10 + [1] * 30)
    flagged = np.array([False] * 7 + [True] * 3 + [True] * 21 + [False] * 9)
    scores = pd.DataFrame({"split": "test", "patient": [f"q{i}" for i in range(40)],
                           "label": np.where(y == 1, "PNEUMONIA", "NORMAL"), "flagged": flagged})
    scores_path = root / "results/anomaly/scores.csv"
    scores_path.parent.mkdir(parents=True)
    scores.to_csv(scores_path, index=False)
    ae = root / "models/autoencoder.pt"
    ae.parent.mkdir(parents=True, exist_ok=True)
    ae.write_bytes(b"autoencoder")
    anomaly = {"data_source": source, "variant": "clahe",
               "score": {"method": "ssim", "label": "SSIM dissimilarity"},
               "model": {"input_size": 64, "variational": False, "n_train_normal": 25},
               "threshold": {"value": 0.031, "rule": "eer", "val_fpr": 0.3, "val_fnr": 0.3},
               "test": {"n": 40, "n_patients": 40, "prevalence": 0.75,
                        **{k: ci(0.7) for k in ("error_rate", "precision", "sensitivity",
                                                "specificity", "f1", "auroc", "auprc")}}}
    inputs = {"data": write_json(root / "results/data/summary.json", data),
              "processed": str(processed),
              "anomaly": write_json(root / "results/anomaly/metrics.json", anomaly),
              "anomaly_scores": str(scores_path), "anomaly_model": str(ae)}
    for task in tasks:
        inputs.update(classifier_files(root, task, source))
    return inputs


@pytest.fixture
def demo_inputs(tmp_path):
    return make_run(tmp_path)


def test_demo_summary_and_model_card_say_synthetic_in_the_first_line(demo_inputs, tmp_path):
    out = {k: str(tmp_path / "out" / n) for k, n in
           (("summary", "summary.json"), ("markdown", "summary.md"), ("model_card", "CARD.md"))}
    summary = report.write_report(demo_inputs, out, seed=1, n_boot=50)
    for key in ("markdown", "model_card"):
        first = Path(out[key]).read_text().splitlines()[0]
        assert first.startswith("# SYNTHETIC DEMO RUN") and "not chest X-rays" in first
    js = json.loads(Path(out["summary"]).read_text())
    assert js["synthetic"] is True and js["notice"].startswith("SYNTHETIC DEMO RUN")
    assert summary["data_sources"] == ["demo"]


def test_real_data_summary_names_its_source_and_has_no_synthetic_notice(tmp_path):
    summary = report.build_summary(make_run(tmp_path, source="kermany"), seed=0, n_boot=20)
    md = report.render_summary_md(summary)
    card = report.render_model_card(summary)
    assert md.splitlines()[0] == "# Run summary: kermany data at `data/x`"
    assert "SYNTHETIC" not in md and "SYNTHETIC" not in card
    assert "children aged one to five from one hospital" in card


def test_reweighting_to_the_study_prevalence_matches_the_hand_computed_binary_numbers():
    # sensitivity 197/200 = 0.985, specificity 661/1000 = 0.661: the study's binary ResNet-18
    y, p = labelled_decisions({0: (661, 1000), 1: (197, 200)}, 2)
    out = report.reweighted_metrics(y, p, None, [0.375, 0.625], n_boot=100, seed=0)
    tp, fp, fn = 0.625 * 0.985, 0.375 * 0.339, 0.625 * 0.015
    assert out["accuracy"]["value"] == pytest.approx(tp + 0.375 * 0.661)
    assert out["accuracy"]["value"] == pytest.approx(0.8638, abs=5e-4)    # the study's accuracy
    assert out["precision"]["value"] == pytest.approx(tp / (tp + fp))
    assert out["precision"]["value"] == pytest.approx(0.829, abs=5e-4)    # and its precision
    assert out["f1"]["value"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["error_rate"]["value"] == pytest.approx(1 - out["accuracy"]["value"])
    # unweighted accuracy on this 1000:200 set is far from it: the re-weighting matters
    assert np.mean(y == p) == pytest.approx(858 / 1200)
    for node in out.values():
        assert node["ci_low"] <= node["value"] <= node["ci_high"]


def test_three_class_accuracy_is_reweighted_to_the_official_class_mix():
    y, p = labelled_decisions({0: (9, 10), 1: (6, 10), 2: (2, 10)}, 3)
    mix = report.class_mix("three_class")
    assert sum(mix.values()) == pytest.approx(1.0)
    assert mix["normal"] == pytest.approx(234 / 624)
    out = report.reweighted_metrics(y, p, None, list(mix.values()), n_boot=50, seed=0)
    assert out["accuracy"]["value"] == pytest.approx((234 * 0.9 + 242 * 0.6 + 148 * 0.2) / 624)
    assert "precision" not in out  # precision/F1 only for two classes


def test_reweighting_agrees_with_the_anomaly_stage_reference_prevalence_metrics():
    from pneumocxr.anomaly.detect import anomaly_metrics

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    score = y * 0.6 + rng.random(120)
    patients = np.repeat(np.arange(60), 2)
    ref = anomaly_metrics(y, score, 0.8, patients, prevalence=report.STUDY_PREVALENCE,
                          n_boot=80, seed=5)
    ours = report.reweighted_metrics(y, score >= 0.8, patients, [0.375, 0.625], n_boot=80, seed=5)
    for mine, theirs in (("precision", "precision_at_reference_prevalence"),
                         ("f1", "f1_at_reference_prevalence")):
        for k in ("value", "ci_low", "ci_high"):
            assert ours[mine][k] == pytest.approx(ref[theirs][k])


def test_summary_puts_each_number_next_to_the_published_one_with_its_provenance(demo_inputs):
    summary = report.build_summary(demo_inputs, seed=0, n_boot=50)
    md = report.render_summary_md(summary)
    for text in ("the study: ResNet-18", "86.38%", "82.9%", "98.5%",      # binary study
                 "the study: VGG16", "78.36%",                              # 3-class study
                 "the study: convolutional autoencoder", "0.299", "0.796", "0.700", "0.701",
                 "0.745",
                 "Kermany et al. 2018 (Cell 172:1122): Inception V3", "92.8%", "0.968",
                 "SQUID (Xiang et al., CVPR 2023)", "0.876",
                 "624 images, 62.5% pneumonia"):
        assert text in md, text
    binary = summary["classifiers"]["binary_resnet18"]
    assert binary["test"]["prevalence"] == pytest.approx(20 / 30)
    assert ("Data: demo data at `data/x`, `test` split: 30 images of 15 patients, pneumonia "
            "prevalence 66.7%. Image size: 64 px. Starting weights: none (trained from scratch)."
            ) in md
    assert "initialised from results/models/binary/resnet18/best.pt" in md  # the 3-class model
    # the binary precision is re-weighted from the per-image predictions (sens 19/20, spec 8/10)
    tp, fp = 0.625 * 0.95, 0.375 * 0.2
    assert binary["at_study_prevalence"]["precision"]["value"] == pytest.approx(tp / (tp + fp))
    assert f"{100 * tp / (tp + fp):.1f}% [" in md
    # the anomaly detector's error at 62.5%: flagged 21/30 pneumonia, 7/10 normals kept
    a = summary["anomaly"]
    assert a["at_study_prevalence"]["error_rate"]["value"] == pytest.approx(
        0.625 * 0.3 + 0.375 * 0.3)


def test_model_card_has_data_hash_manifest_calibration_threshold_and_limits(demo_inputs,
                                                                           tmp_path):
    summary = report.build_summary(demo_inputs, seed=0, n_boot=20)
    card = report.render_model_card(summary)
    man = summary["data"]["manifest"]
    assert man["sha256"] == report.file_sha256(tmp_path / "processed/metadata.csv")
    assert man["rows_per_split"] == {"train": 2, "val": 1, "test": 1}
    for text in (man["training_data_sha256"], man["sha256"], "## Intended use",
                 "## Not intended for", "## Calibration",
                 "| binary resnet18 | 1.300 | 0.120 | 0.040 |",
                 "p(pneumonia) >= 0.420, youden", "2 groups of byte-identical images (5 files), "
                 "1 of them across splits", "significant drop: the model uses the border",
                 "sensitivity 97.0% on val -> 93.0% on test",
                 "stratified by subtype (largest share gap 1.2 points), seed 42.",
                 report.file_sha256(demo_inputs["model_binary_resnet18"])[:16]):
        assert text in card, text


def test_training_data_hash_follows_train_images_not_test_images(tmp_path):
    root = make_run(tmp_path)["processed"]
    path = Path(root) / "metadata.csv"
    before = report.manifest_section(root)["training_data_sha256"]
    meta = pd.read_csv(path)
    meta.loc[meta["split"] == "test", "sha256"] = "changed"
    meta.to_csv(path, index=False)
    assert report.manifest_section(root)["training_data_sha256"] == before
    meta.loc[0, "sha256"] = "changed"
    meta.to_csv(path, index=False)
    assert report.manifest_section(root)["training_data_sha256"] != before


def test_medmnist_like_run_without_three_class_says_it_was_not_run(tmp_path):
    summary = report.build_summary(make_run(tmp_path, source="kermany", tasks=("binary",)),
                                   n_boot=20)
    md = report.render_summary_md(summary)
    assert "Not run: this data source has no bacterial/viral subtypes" in md
    assert "78.36%" in md


def test_missing_or_broken_inputs_are_clear_errors(demo_inputs, tmp_path):
    gone = dict(demo_inputs, classify_binary_resnet18=str(tmp_path / "nope.json"))
    with pytest.raises(FileNotFoundError, match="nope.json: binary resnet18 metrics missing"):
        report.build_summary(gone)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: anomaly metrics is not valid JSON"):
        report.build_summary(dict(demo_inputs, anomaly=str(bad)))
    old = json.loads(Path(demo_inputs["classify_binary_resnet18"]).read_text())
    del old["test"]["auroc"]
    stale = write_json(tmp_path / "stale.json", old)
    with pytest.raises(ValueError, match="stale.json: no 'auroc'"):
        report.build_summary(dict(demo_inputs, classify_binary_resnet18=stale))
    short = dict(demo_inputs)
    del short["predictions_three_class_resnet18"]
    with pytest.raises(ValueError, match="predictions_three_class_resnet18 is missing"):
        report.build_summary(short)
    with pytest.raises(ValueError, match="unknown summary outputs"):
        report.write_report(demo_inputs, {"html": str(tmp_path / "x.html")})


def test_summary_stage_is_in_dvc_yaml_and_make_writes_the_html_report(repo_root):
    stage = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]["summary"]
    assert stage["metrics"] == ["results/summary.json"]
    assert set(stage["outs"]) == {"results/summary.md", "results/MODEL_CARD.md"}
    assert "results/classify/binary/resnet18/predictions.csv" in stage["deps"]
    # exactly the keys the summary reads (a change to another evaluate key reruns nothing)
    assert stage["params"] == ["evaluate.n_boot", "report", "seed"]
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    for target in ("demo", "run"):
        proc = subprocess.run(["make", "--dry-run", target], cwd=repo_root, capture_output=True,
                              text=True, check=True)
        line = next(x for x in proc.stdout.splitlines() if "snakemake --profile" in x)
        assert " all" in line and "--report-after-run --report results/report.html" in line


def test_a_folded_binary_model_is_labelled_as_the_joint_network_it_reads():
    from pneumocxr.report import weights_label

    assert weights_label("none") == "none (trained from scratch)"
    assert weights_label("none", "results/models/three_class/resnet18/best.pt") == (
        "the three-class network folded (joint head, from scratch): "
        "results/models/three_class/resnet18/best.pt")
    assert weights_label("imagenet", "m.pt") == (
        "the three-class network folded (joint head, ImageNet-pretrained, fine-tuned): m.pt")
