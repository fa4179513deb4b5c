"""The prepare step end to end on tiny synthetic data (and one slow run on the real data)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pneumocxr.config import complete, dag_structure, load_params
from pneumocxr.data.arrays import METADATA_COLUMNS, SPLITS, load_split, read_info
from pneumocxr.data.prepare import prepare
from pneumocxr.stage import format_structure

SIZE = dict(resize=40, crop=32, min_side=32)
#: params ``data`` keys prepare takes as arguments, at the schema's defaults
DATA_DEFAULTS = {k: v for k, v in complete("data", {"source": "kermany", "root": "x"}).items()
                 if k in ("split_seed", "val_fraction", "min_side", "max_pixels")}
#: keys of params ``prepare`` (the ``prepare_params`` argument)
PREPARE_KEYS = ("resize", "crop", "variants", "clahe")


def _img(rng, h=48, w=56) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    base = 100 + 60 * np.sin(x / rng.uniform(3, 9)) + 40 * np.cos(y / rng.uniform(3, 9))
    return np.clip(base + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)


def write_layout(root, seed=0, n=(18, 18, 18), n_test=4, with_val=True):
    """A tiny Kaggle-layout folder: 1-2 images per patient, JPEG, distinct pixels."""
    rng = np.random.default_rng(seed)
    plan = [("train", n, 0), ("test", (n_test,) * 3, 500)]
    if with_val:
        plan.append(("val", (2, 2, 0), 900))
    for split, (n_norm, n_bac, n_vir), offset in plan:
        for kind, count in (("normal", n_norm), ("bacteria", n_bac), ("virus", n_vir)):
            for p in range(offset, offset + count):
                for k in range(1, 1 + int(rng.integers(1, 3))):
                    if kind == "normal":
                        name, cls = f"IM-{p:04d}-{k:04d}.jpeg", "NORMAL"
                    else:
                        name, cls = f"person{p}_{kind}_{p * 10 + k}.jpeg", "PNEUMONIA"
                    path = root / split / cls / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(_img(rng)).save(path, quality=90)
    return root


def _run(root, tmp_path, tag="run", **kw):
    args = dict(DATA_DEFAULTS, **SIZE, val_fraction=0.25, split_seed=3, threads=2,
                progress=False)
    args.update(kw)
    prep = {k: args.pop(k) for k in PREPARE_KEYS if k in args}
    out, rep = tmp_path / tag / "processed", tmp_path / tag / "reports"
    summary = prepare(args.pop("source", "kermany"), root, out, rep, prepare_params=prep, **args)
    return summary, out, rep


def _rejected(rep) -> dict[str, str]:
    with (rep / "rejected.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return {r["file"]: r["reason"] for r in rows}


def test_prepare_writes_what_load_split_reads(tmp_path):
    root = write_layout(tmp_path / "raw")
    summary, out, rep = _run(root, tmp_path)
    meta = pd.read_csv(out / "metadata.csv")
    assert tuple(meta.columns) == METADATA_COLUMNS
    info = read_info(out)
    assert info["data_source"] == "kermany" and info["variants"] == ["plain", "clahe"]
    assert (info["resize"], info["crop"]) == (40, 32)
    assert info["clahe"] == {"clip_limit": 2.0, "tile_grid": 8}
    for split in SPLITS:
        plain, clahe = load_split(out, split, "plain"), load_split(out, split, "clahe")
        assert plain.images.dtype == np.uint8 and plain.images.shape[1:] == (32, 32)
        assert isinstance(plain.images, np.memmap)
        assert len(plain) == info["counts"][split] == summary["counts"][split]["total"] > 0
        assert plain.has_subtypes and set(plain.y_three_class) <= {0, 1, 2}
        assert list(plain.meta["index"]) == list(range(len(plain)))
        assert not np.array_equal(plain.images, clahe.images)
    # the arrays hold the images of the metadata rows, in order
    test = load_split(out, "test", "plain")
    row = test.meta.iloc[3]
    assert row["file"].startswith("test/")
    gray = np.asarray(Image.open(root / row["file"]).convert("L"))
    expected = cv2.resize(gray, (47, 40), interpolation=cv2.INTER_AREA)[4:36, 7:39]
    assert np.abs(test.images[3].astype(int) - expected).max() <= 1
    assert (rep / "overview.png").stat().st_size > 10_000
    assert json.loads((rep / "summary.json").read_text()) == summary
    assert _rejected(rep) == {}


def test_splits_are_patient_disjoint_and_official_folders_are_honoured(tmp_path):
    root = write_layout(tmp_path / "raw")
    summary, out, _ = _run(root, tmp_path)
    meta = pd.read_csv(out / "metadata.csv")
    assert set(meta.loc[meta["official_split"] == "train", "split"]) == {"train", "val"}
    assert set(meta.loc[meta["official_split"] == "test", "split"]) == {"test"}
    assert set(meta.loc[meta["official_split"] == "val", "split"]) == {"val_official"}
    by_split = meta.groupby("split")["patient"].apply(set)
    assert not by_split["train"] & by_split["val"]
    assert summary["leakage"]["n_patients_in_two_splits"] == 0
    assert summary["patients"]["val"] == len(by_split["val"]) > 0
    n_val = {c: len(list((root / "val" / c).iterdir())) for c in ("NORMAL", "PNEUMONIA")}
    assert summary["counts_official"]["val"]["label"] == n_val
    assert summary["counts_official"]["val"]["subtype"]["virus"] == 0


def test_output_does_not_depend_on_the_number_of_threads(tmp_path):
    root = write_layout(tmp_path / "raw", n=(8, 8, 8))
    s1, out1, _ = _run(root, tmp_path, "t1", threads=1)
    s3, out3, _ = _run(root, tmp_path, "t3", threads=3)
    assert (out1 / "metadata.csv").read_bytes() == (out3 / "metadata.csv").read_bytes()
    for variant in ("plain", "clahe"):
        for split in SPLITS:
            a = (out1 / variant / f"{split}.npy").read_bytes()
            assert a == (out3 / variant / f"{split}.npy").read_bytes()
    s1["params"].pop("threads"), s3["params"].pop("threads")
    assert s1 == s3


def test_bad_files_are_rejected_with_a_reason_and_the_run_goes_on(tmp_path):
    root = write_layout(tmp_path / "raw")
    normal = root / "train" / "NORMAL"
    good = sorted(normal.iterdir())[0].read_bytes()
    (normal / "IM-0800-0001.jpeg").write_bytes(b"")
    (normal / "IM-0801-0001.jpeg").write_bytes(good[: len(good) // 2])
    (normal / "IM-0802-0001.jpeg").write_text("not an x-ray\n" * 50)
    Image.fromarray(_img(np.random.default_rng(1), 150, 150)).save(normal / "IM-0803-0001.png")
    Image.fromarray(_img(np.random.default_rng(2), 20, 60)).save(normal / "IM-0804-0001.png")
    (normal / "scan_0001.jpeg").write_bytes(good)
    (normal / "person99_bacteria_1.jpeg").write_bytes(good)
    Image.fromarray(_img(np.random.default_rng(3))).save(normal / "IM-0805-0001.jpeg",
                                                         format="BMP")
    summary, out, rep = _run(root, tmp_path, max_pixels=10_000)
    reasons = {f.rsplit("/", 1)[1]: r.split(":", 1)[0] for f, r in _rejected(rep).items()}
    assert reasons == {
        "IM-0800-0001.jpeg": "empty", "IM-0801-0001.jpeg": "truncated",
        "IM-0802-0001.jpeg": "not_an_image", "IM-0803-0001.png": "decompression_bomb",
        "IM-0804-0001.png": "too_small", "scan_0001.jpeg": "bad_name",
        "person99_bacteria_1.jpeg": "label_mismatch", "IM-0805-0001.jpeg": "unsupported_format",
    }
    assert summary["rejected"]["count"] == 8
    assert sum(summary["rejected"]["by_kind"].values()) == 8
    meta = pd.read_csv(out / "metadata.csv")
    assert not meta["file"].str.contains("IM-080|scan_|person99").any()
    assert summary["n_candidates"] == summary["n_images"] + 8


def test_unusual_but_valid_files_are_kept(tmp_path):
    root = write_layout(tmp_path / "raw")
    normal = root / "train" / "NORMAL"
    rng = np.random.default_rng(5)
    g = _img(rng)
    Image.fromarray(np.stack([g] * 3, -1)).convert("CMYK").save(normal / "IM-0700-0001.jpeg")
    Image.fromarray(np.stack([g, g, g, np.full_like(g, 90)], -1), "RGBA").save(
        normal / "IM-0701-0001.png")
    Image.fromarray(np.stack([_img(rng)] * 3, -1)).quantize(64).save(normal / "IM-0702-0001.png")
    ok, buf = cv2.imencode(".png", _img(rng).astype(np.uint16) * 257)
    (normal / "IM-0703-0001.png").write_bytes(buf.tobytes())
    Image.fromarray(cv2.resize(_img(rng), (1400, 1200))).save(normal / "IM-0704-0001.jpeg")
    summary, out, rep = _run(root, tmp_path)
    assert _rejected(rep) == {}
    meta = pd.read_csv(out / "metadata.csv")
    kept = set(meta["file"].str.rsplit("/", n=1).str[1])
    assert {f"IM-070{i}-0001.{e}" for i, e in enumerate(["jpeg", "png", "png", "png", "jpeg"])} \
        <= kept
    assert {"CMYK", "RGBA", "P", "I;16"} <= set(summary["source_modes"])
    big = meta[meta["file"].str.endswith("IM-0704-0001.jpeg")].iloc[0]
    assert (big["orig_width"], big["orig_height"]) == (1400, 1200)


def test_duplicates_and_leakage_are_reported(tmp_path):
    root = write_layout(tmp_path / "raw")
    normal = root / "train" / "NORMAL"
    first = sorted(normal.iterdir())[0]              # IM-0000-0001.jpeg
    shutil.copy(first, normal / "IM-0000-0009.jpeg")                    # same patient, same split
    test_img = sorted((root / "test" / "NORMAL").iterdir())[0]
    shutil.copy(test_img, normal / "IM-0600-0001.jpeg")                 # identical across splits
    shutil.copy(sorted(normal.iterdir())[1], root / "test" / "NORMAL" / "IM-0001-0042.jpeg")
    summary, out, _ = _run(root, tmp_path)
    dups = summary["duplicates"]
    assert dups["n_groups"] == 3
    within = [g for g in dups["groups"] if not g["crosses_splits"]]
    assert [g["files"] for g in within] == [["train/NORMAL/IM-0000-0001.jpeg",
                                              "train/NORMAL/IM-0000-0009.jpeg"]]
    leak = summary["leakage"]
    assert leak["n_duplicate_groups_across_splits"] == 2
    # IM-0001 is in train (or carved val) and in test: one patient in two splits
    assert leak["n_patients_in_two_splits"] == 1
    assert any(ps == ["IM-0001"] for pair, ps in leak["patient_overlap"].items()
               if pair.endswith("|test"))


def test_layout_without_val_gives_an_empty_val_official(tmp_path):
    root = write_layout(tmp_path / "raw", with_val=False)
    summary, out, _ = _run(root, tmp_path)
    vo = load_split(out, "val_official")
    assert len(vo) == 0 and vo.images.shape == (0, 32, 32)
    assert summary["counts"]["val_official"]["total"] == 0


def test_a_class_left_empty_by_rejections_is_a_clear_error(tmp_path):
    root = write_layout(tmp_path / "raw")
    emptied = sorted((root / "test" / "PNEUMONIA").iterdir())
    for f in emptied:
        f.write_bytes(b"")
    with pytest.raises(ValueError, match=r"test/PNEUMONIA: no usable images") as err:
        _run(root, tmp_path)
    assert "rejected.csv" in str(err.value)
    # the reasons are on disk for the user to read
    assert sorted(_rejected(tmp_path / "run" / "reports")) == \
        [f"test/PNEUMONIA/{f.name}" for f in emptied]


def test_missing_data_folder_fails_at_once_naming_layout_source_and_demo(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        _run(tmp_path / "absent", tmp_path)
    msg = str(err.value)
    for needle in ("absent", "{train,val,test}/{NORMAL,PNEUMONIA}", "Kaggle",
                   "paultimothymooney/chest-xray-pneumonia", "10.17632/rscbjbr9sj.2",
                   "snakemake --configfile config/demo.yaml", "make demo"):
        assert needle in msg
    assert not (tmp_path / "run").exists()
    with pytest.raises(FileNotFoundError, match="demo data not generated yet"):
        _run(tmp_path / "absent", tmp_path, source="demo")


def test_demo_source_goes_through_the_folder_path_and_is_recorded(tmp_path):
    root = write_layout(tmp_path / "raw", n=(8, 8, 8))
    summary, out, _ = _run(root, tmp_path, source="demo", variants=["plain"])
    assert summary["data_source"] == "demo" and read_info(out)["data_source"] == "demo"
    assert load_split(out, "train").data_source == "demo"
    assert not (out / "clahe").exists()


def test_overview_title_marks_demo_data_synthetic(monkeypatch, tmp_path):
    import pneumocxr.plots.data as plots_data

    captured = {}
    monkeypatch.setattr(plots_data, "save", lambda fig, path: captured.setdefault("fig", fig))
    img = np.zeros((32, 32), np.uint8)
    plots_data.plot_data_overview({"normal": [(img, img)], "virus": [(img, img)]},
                                  {"train": {"normal": 3, "virus": 1}}, "demo", tmp_path / "x")
    assert "SYNTHETIC" in captured["fig"]._suptitle.get_text()


def _write_npz(path, seed=0, n=(80, 12, 12), size=20):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % 3 != 0).astype(np.uint8)[:, None]
    arrays["test_images"][0] = arrays["train_images"][5]        # leaks across splits
    np.savez(path, **arrays)
    return arrays


def test_medmnist_npz_is_prepared_with_binary_labels_and_one_patient_per_image(tmp_path):
    arrays = _write_npz(tmp_path / "pm.npz")
    summary, out, _ = _run(tmp_path / "pm.npz", tmp_path, source="medmnist", resize=20, crop=16,
                           min_side=16, val_fraction=0.2)
    train, val = load_split(out, "train"), load_split(out, "val")
    assert len(train) + len(val) == 80
    assert len(load_split(out, "val_official")) == 12 and len(load_split(out, "test")) == 12
    assert not train.has_subtypes and set(train.meta["subtype"]) == {"unknown"}
    with pytest.raises(ValueError, match="without a bacteria/virus subtype"):
        train.y_three_class
    assert train.meta["patient"].is_unique and not set(train.patients) & set(val.patients)
    np.testing.assert_array_equal(
        train.y_binary, arrays["train_labels"][train.meta["file"].str.extract(r"\[(\d+)\]")[0]
                                               .astype(int), 0])
    leak = summary["leakage"]["duplicate_groups_across_splits"]
    assert len(leak) == 1 and leak[0]["files"] == ["test_images[0]", "train_images[5]"]
    assert summary["stratification"]["by"] == "label"


def test_medmnist_bad_files_are_clear_errors(tmp_path):
    arrays = _write_npz(tmp_path / "pm.npz")
    with pytest.raises(ValueError, match="set data.min_side: 20"):
        _run(tmp_path / "pm.npz", tmp_path, source="medmnist", min_side=64)
    arrays["train_labels"][0] = 2
    np.savez(tmp_path / "multi.npz", **arrays)
    with pytest.raises(ValueError, match="only binary labels"):
        _run(tmp_path / "multi.npz", tmp_path, source="medmnist", min_side=16, resize=20, crop=16)
    np.savez(tmp_path / "nokeys.npz", images=arrays["train_images"])
    with pytest.raises(ValueError, match="missing keys"):
        _run(tmp_path / "nokeys.npz", tmp_path, source="medmnist", min_side=16)
    with pytest.raises(FileNotFoundError, match="MedMNIST"):
        _run(tmp_path / "none.npz", tmp_path, source="medmnist")


@pytest.mark.slow
def test_medmnist_real_npz_reports_its_cross_split_duplicates(medmnist_npz, tmp_path):
    summary, out, _ = _run(medmnist_npz, tmp_path, source="medmnist", resize=28, crop=28,
                           min_side=28, val_fraction=0.1, threads=2)
    with np.load(medmnist_npz) as npz:
        n = {s: len(npz[f"{s}_images"]) for s in ("train", "val", "test")}
    c = summary["counts"]
    assert c["train"]["total"] + c["val"]["total"] == n["train"]
    assert (c["val_official"]["total"], c["test"]["total"]) == (n["val"], n["test"])
    assert summary["duplicates"]["n_groups"] > 0
    assert summary["leakage"]["n_duplicate_groups_across_splits"] == sum(
        g["crosses_splits"] for g in summary["duplicates"]["groups"]) > 0


def _params_file(tmp_path, root, **data) -> str:
    # the split has its own seed: the top-level seed (of training) must not reach prepare
    params = {"seed": 5, "device": "cpu",
              "data": {"source": "kermany", "root": str(root), "val_fraction": 0.25,
                       "min_side": 32, "split_seed": 3, **data},
              "prepare": {"resize": 40, "crop": 32, "variants": ["plain", "clahe"]}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def _script(repo_root, tmp_path, raw, params_file):
    res = tmp_path / "results" / "data"
    cmd = [sys.executable, "workflow/scripts/prepare.py", "--rule", "prepare",
           "--input", f"raw={raw}",
           "--output", f"processed={tmp_path / 'processed'}", f"summary={res / 'summary.json'}",
           f"rejected={res / 'rejected.csv'}", f"overview={res / 'overview.png'}",
           "--log", str(tmp_path / "prepare.log"), "--threads", "2",
           "--params", "data", "prepare", "--params-file", params_file,
           "--dag", *format_structure(dag_structure(load_params(params_file)))]
    return subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)


def test_script_runs_through_the_dvc_route(repo_root, tmp_path):
    raw = write_layout(tmp_path / "raw", n=(8, 8, 8))
    proc = _script(repo_root, tmp_path, raw, _params_file(tmp_path, raw))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "results" / "data" / "summary.json").read_text())
    assert summary["params"]["threads"] == 2 and summary["params"]["split_seed"] == 3
    assert "seed" not in summary["params"]
    assert read_info(tmp_path / "processed")["split_seed"] == 3
    assert (tmp_path / "results" / "data" / "overview.png").is_file()
    n_test = len(list((raw / "test").glob("*/*.jpeg")))
    assert len(load_split(tmp_path / "processed", "test", "clahe")) == n_test
    assert "prepared" in (tmp_path / "prepare.log").read_text()


def test_script_missing_data_exits_1_with_one_clear_line(repo_root, tmp_path):
    raw = tmp_path / "absent"
    proc = _script(repo_root, tmp_path, raw, _params_file(tmp_path, raw))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "paultimothymooney/chest-xray-pneumonia" in (tmp_path / "prepare.log").read_text()


@pytest.mark.slow
def test_real_kermany_data_is_prepared_completely(kermany_root, tmp_path):
    summary, out, rep = _run(kermany_root, tmp_path, resize=73, crop=64, min_side=64,
                             val_fraction=0.1, split_seed=42, threads=2)
    off = summary["counts_official"]
    # the shared README's table
    expected = {"train": (1205, 3487, 2277, 1210), "val": (8, 8, 8, 0),
                "test": (136, 388, 253, 135)}
    for split, (normal, pneu, bact, vir) in expected.items():
        assert off[split]["label"] == {"NORMAL": normal, "PNEUMONIA": pneu}
        assert off[split]["subtype"] == {"normal": normal, "bacteria": bact, "virus": vir}
    assert summary["n_images"] == 5232 and summary["rejected"]["count"] == 0
    assert _rejected(rep) == {}
    assert summary["leakage"]["n_patients_in_two_splits"] == 0
    assert summary["leakage"]["n_duplicate_groups_across_splits"] == 0
    assert summary["duplicates"]["n_groups"] == 24
    assert summary["duplicates"]["group_sizes"] == {"2": 22, "3": 2}
    assert ["train/PNEUMONIA/person1372_bacteria_3501.jpeg",
            "train/PNEUMONIA/person1372_bacteria_3502.jpeg",
            "train/PNEUMONIA/person1372_bacteria_3503.jpeg"] in \
        [g["files"] for g in summary["duplicates"]["groups"]]
    assert summary["stratification"]["max_gap_points"] <= 2.0
    assert summary["counts"]["val"]["total"] + summary["counts"]["train"]["total"] == 4692
    assert len(load_split(out, "test", "clahe")) == 524
