"""External test sets: preparing them like the training images, the leakage check, the three
input formats; the threshold rules and a site's own calibration on hand-computable cases."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumocxr.calibration import choose_threshold
from pneumocxr.config import ParamsError, complete
from pneumocxr.data.arrays import load_split
from pneumocxr.data.external import ExternalSet, prepare_external, raw_files
from pneumocxr.site import fit_site, logit_difference, required_n
from test_prepare import _img, _run, write_layout


def _external_folder(root, seed=5, n=6, names=True):
    rng = np.random.default_rng(seed)
    for i in range(n):
        for cls, name in (("NORMAL", f"IM-{7000 + i:04d}-0001.jpeg"),
                          ("PNEUMONIA", f"person{7000 + i}_bacteria_{i}.jpeg")):
            if not names:
                name = f"img{i}_{cls.lower()}.png"
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_img(rng)).save(path)
    return root


def _processed_dir(tmp, raw):
    """Run prepare (test_prepare's helper) and return its prepared folder."""
    return _run(raw, tmp, tag="prep")[1]


def test_a_class_folder_set_is_prepared_like_training_and_training_images_are_excluded(tmp_path):
    raw = write_layout(tmp_path / "raw", seed=1)
    processed = _processed_dir(tmp_path, raw)
    ext_root = _external_folder(tmp_path / "site")
    # one image that is also a training image (same bytes): reported and excluded
    train_img = sorted((raw / "train" / "NORMAL").iterdir())[0]
    shutil.copy2(train_img, ext_root / "NORMAL" / "IM-7999-0001.jpeg")
    (ext_root / "NORMAL" / "broken.jpeg").write_bytes(b"not an image")
    ext = ExternalSet.from_params("site", {"path": str(ext_root)})
    out = tmp_path / "prepared"
    report = prepare_external(ext, processed, out, tmp_path / "r/data.json",
                              tmp_path / "r/rejected.csv", min_side=32, max_pixels=10 ** 8)
    assert report["n_images"] == 12 and report["n_excluded_in_train"] == 1
    assert report["excluded_in_train"] == ["NORMAL/IM-7999-0001.jpeg"]
    assert report["n_rejected"] == 1 and report["patients_known"]
    assert report["has_subtypes"] and report["bootstrap_unit"] == "patient"
    rejected = pd.read_csv(tmp_path / "r/rejected.csv")
    assert set(rejected["file"]) == {"NORMAL/IM-7999-0001.jpeg", "NORMAL/broken.jpeg"}
    split = load_split(out, "test", "plain")
    clahe = load_split(out, "test", "clahe")
    info = json.loads((processed / "info.json").read_text())
    assert split.images.shape == (12, info["crop"], info["crop"]) == clahe.images.shape
    assert set(split.meta["subtype"]) == {"normal", "bacteria"}
    assert split.patients[0].startswith(("IM-", "person"))


def test_a_labels_csv_without_patient_ids_resamples_images_and_says_so(tmp_path):
    raw = write_layout(tmp_path / "raw", seed=1)
    processed = _processed_dir(tmp_path, raw)
    site = _external_folder(tmp_path / "site", names=False)
    rows = [{"file": str(p.relative_to(site)), "label": p.parent.name.lower()}
            for p in sorted(site.rglob("*.png"))]
    rows.append({"file": "NORMAL/missing.png", "label": "normal"})
    rows.append({"file": rows[0]["file"], "label": "covid"})
    pd.DataFrame(rows).to_csv(site / "labels.csv", index=False)
    ext = ExternalSet.from_params("csvsite", {"path": str(site)})
    assert ext.format == "csv"
    assert str(site / "labels.csv") in raw_files(ext)
    report = prepare_external(ext, processed, tmp_path / "p", tmp_path / "r/d.json",
                              tmp_path / "r/rej.csv", min_side=32, max_pixels=10 ** 8)
    assert report["n_images"] == 12 and not report["patients_known"]
    assert report["bootstrap_unit"].startswith("image") and not report["has_subtypes"]
    reasons = pd.read_csv(tmp_path / "r/rej.csv")["reason"]
    assert reasons.str.startswith("missing").sum() == 1 and reasons.str.startswith("bad_label").sum() == 1
    meta = load_split(tmp_path / "p", "test").meta
    assert meta["patient"].is_unique                     # each image its own group


def test_external_params_are_checked_at_start_up():
    with pytest.raises(ParamsError, match="external.site.pth: unknown key"):
        complete("external", {"site": {"pth": "x"}})
    with pytest.raises(ParamsError, match="does not match"):
        complete("external", {"Site-2": {"path": "x"}})
    assert complete("external", {"a": {"path": "x"}})["a"] == {"path": "x", "labels": None,
                                                               "npz_split": "test"}


def test_a_missing_external_folder_names_the_set_and_the_layouts(tmp_path):
    from pneumocxr.data.external import candidates_of

    ext = ExternalSet.from_params("gone", {"path": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="external set 'gone' not found.*NORMAL/"):
        candidates_of(ext, 32, 10 ** 8)


# ----------------------------------------------------------------------------- thresholds


def test_threshold_rules_on_a_hand_computable_case():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    youden = choose_threshold(y, s, "youden")           # J: 0.75 at t=0.7 (3/4 and 4/4)
    assert youden["value"] == pytest.approx(0.7)
    assert (youden["val_sensitivity"], youden["val_specificity"]) == (0.75, 1.0)
    sens = choose_threshold(y, s, "sensitivity", target_sensitivity=1.0)
    assert sens["value"] == pytest.approx(0.4)             # the most specific t with sens 1
    assert (sens["val_sensitivity"], sens["val_specificity"]) == (1.0, 0.75)


def test_a_site_fit_recovers_a_shifted_threshold():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, int), np.ones(200, int)]
    d = np.where(y == 1, rng.normal(4, 1, 400), rng.normal(1.5, 1, 400))   # normals moved up
    fit = fit_site(d, y, rule="youden", target_sensitivity=0.95)
    # the Youden point of two unit-variance normals lies half way between their means
    t = np.log(fit["operating_threshold"]["value"] / (1 - fit["operating_threshold"]["value"]))
    assert t * fit["temperature"] == pytest.approx(2.75, abs=0.35)
    p = 1 / (1 + np.exp(-d / 0.5))
    assert np.allclose(logit_difference(p, 0.5), d)
    assert required_n(0.9, 0.05) == 139 and required_n(0.5, 0.1) == 97
