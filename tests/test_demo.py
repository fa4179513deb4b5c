"""The embedded demo data set: layout, names, patients, determinism, difficulty, the script."""

from __future__ import annotations

import hashlib
import re
import runpy
import shlex
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pneumocxr.config import dag_structure, load_params
from pneumocxr.data import demo
from pneumocxr.data.demo import CLASS_MIX, generate_demo, plan_demo, render_chest_xray
from pneumocxr.stage import format_structure

# The real name patterns (shared data README): normals IM-XXXX-YYYY[-ZZZZ] and
# NORMAL2-IM-XXXX-YYYY[-ZZZZ]; pneumonia personN_bacteria_M / personN_virus_M.
NORMAL_NAME = re.compile(r"^(?P<patient>(?:NORMAL2-)?IM-\d{4})-\d{4}(?:-\d{4})?\.jpeg$")
PERSON_NAME = re.compile(r"^(?P<patient>person\d+_(?P<subtype>bacteria|virus))_\d+\.jpeg$")

SMALL = dict(n_train=40, n_test=20, n_val=4, size=64)


def parse(name: str) -> tuple[str, str, str]:
    """(label, subtype, patient) from a demo file name; fails on a name the real data lacks."""
    m = NORMAL_NAME.match(name)
    if m:
        return "NORMAL", "normal", m["patient"]
    m = PERSON_NAME.match(name)
    assert m, f"{name} fits no Kermany file-name pattern"
    return "PNEUMONIA", m["subtype"], m["patient"]


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files_of(root)}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo") / "chest_xray"
    return root, generate_demo(root, **SMALL, seed=3, progress=False)


def test_demo_is_written_in_the_kaggle_layout_with_real_file_names(small_demo):
    root, summary = small_demo
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "val"]
    seen = Counter()
    for path in files_of(root):
        split, folder, name = path.relative_to(root).parts
        label, subtype, _ = parse(name)
        assert folder == label, f"{path}: a {label} name in the {folder} folder"
        seen[split, subtype] += 1
    for split in ("train", "val", "test"):
        counts = summary["splits"][split]
        assert counts["images"] == SMALL[f"n_{split}"]
        for subtype in CLASS_MIX:
            assert seen[split, subtype] == counts[subtype], (split, subtype)
        assert counts["NORMAL"] == counts["normal"]
        assert counts["PNEUMONIA"] == counts["bacteria"] + counts["virus"]
    assert summary["n_images"] == sum(SMALL[f"n_{s}"] for s in ("train", "val", "test"))


def test_demo_images_are_grayscale_jpegs_of_the_requested_size(small_demo):
    root, _ = small_demo
    for path in files_of(root)[:12]:
        assert path.read_bytes()[:3] == b"\xff\xd8\xff", f"{path} is not a JPEG"
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.shape == (SMALL["size"], SMALL["size"])
        assert img.std() > 10, f"{path} is nearly flat"


def test_demo_names_parse_with_the_kermany_reader(small_demo):
    kermany = pytest.importorskip("pneumocxr.data.kermany")
    root, _ = small_demo
    for path in files_of(root):
        assert tuple(kermany.parse_filename(path.name)) == parse(path.name)


def test_patients_never_cross_splits_and_some_have_several_images():
    images = plan_demo(n_train=240, n_test=80, n_val=16, seed=7)
    splits_of, files_of_patient = defaultdict(set), Counter()
    for item in images:
        label, subtype, patient = parse(item.file)
        assert (label, subtype, patient) == (item.label, item.subtype, item.patient)
        splits_of[patient].add(item.split)
        files_of_patient[patient] += 1
    assert all(len(s) == 1 for s in splits_of.values()), "a patient crosses splits"
    assert len({it.file for it in images}) == len(images), "duplicate file names"
    sizes = Counter(files_of_patient.values())
    assert set(sizes) == {1, 2, 3} and sizes[1] > sizes[2] + sizes[3] > 0
    assert any(n.startswith("NORMAL2-IM-") for n in files_of_patient)
    assert any(n.startswith("IM-") for n in files_of_patient)


def test_class_mix_follows_the_real_train_split_and_val_is_normal_and_bacteria():
    images = plan_demo(n_train=240, n_test=80, n_val=16, seed=7)
    for split, n in (("train", 240), ("test", 80)):
        mix = Counter(it.subtype for it in images if it.split == split)
        assert sum(mix.values()) == n
        for subtype, share in CLASS_MIX.items():
            assert abs(mix[subtype] / n - share) < 0.02, (split, subtype, mix)
    val = Counter(it.subtype for it in images if it.split == "val")
    assert val == {"normal": 8, "bacteria": 8}


def test_same_seed_gives_byte_identical_files_and_another_seed_other_images(tmp_path):
    kwargs = dict(n_train=12, n_test=6, n_val=2, size=64)
    generate_demo(tmp_path / "a", **kwargs, seed=11, progress=False)
    generate_demo(tmp_path / "b", **kwargs, seed=11, progress=False)
    generate_demo(tmp_path / "c", **kwargs, seed=12, progress=False)
    a, b, c = (digests(tmp_path / name) for name in "abc")
    assert a == b and len(a) == 20
    assert not set(a.values()) & set(c.values()), "another seed repeated an image"


def test_images_of_one_patient_share_anatomy_and_disease_but_are_not_copies(monkeypatch):
    def draw(patient_seed, image_seed):
        return render_chest_xray(96, "bacteria", np.random.default_rng(patient_seed),
                                 np.random.default_rng(image_seed)).astype(np.float32)

    assert np.array_equal(draw(5, 1), draw(5, 1))
    assert np.abs(draw(5, 1) - draw(5, 2)).mean() > 1.0, "two images of a patient are copies"
    # without the per-image pose and exposure, a patient's images still differ (noise, marker,
    # breathing) but look far more alike than other patients' images
    monkeypatch.setattr(demo, "POSE", {"rotate_deg": 0.0, "scale": (1, 1), "shift": 0.0})
    monkeypatch.setattr(demo, "EXPOSURE", {"contrast": (1, 1), "offset": 0.0, "heel": (0, 0),
                                           "gamma": (1, 1)})
    a = draw(5, 1)
    same = [np.abs(a - draw(5, s)).mean() for s in (2, 3, 4)]
    other = [np.abs(a - draw(p, 1)).mean() for p in (6, 7, 8)]
    assert max(same) < min(other), (same, other)


def test_generate_demo_rejects_bad_arguments_and_a_non_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        generate_demo(tmp_path / "x", n_train=2, n_test=6, n_val=2, size=64, seed=0)
    with pytest.raises(ValueError, match="size"):
        generate_demo(tmp_path / "x", n_train=12, n_test=6, n_val=2, size=16, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate_demo(tmp_path / "x", n_train=12, n_test=6, n_val=2, size=64, seed=-1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.jpeg").write_bytes(b"old")
    with pytest.raises(ValueError, match="not empty"):
        generate_demo(tmp_path / "full", n_train=12, n_test=6, n_val=2, size=64, seed=0)
    with pytest.raises(ValueError, match="subtype"):
        render_chest_xray(64, "fungal", np.random.default_rng(0), np.random.default_rng(0))


# --- difficulty: learnable, but neither trivial nor a subtype giveaway -----------------------


def _load(root: Path, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    paths = sorted((root / split).glob("*/*.jpeg"))
    return ([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths],
            np.array([parse(p.name)[1] for p in paths]))


def _features(images: list[np.ndarray]) -> np.ndarray:
    """32x32 standardized pixels + band-pass energy on a 4x4 grid + intensity quantiles."""
    rows = []
    for im in images:
        a = cv2.resize(im, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        b = cv2.resize(im, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
        a, b = ((v - v.mean()) / (v.std() + 1e-6) for v in (a, b))
        texture = [np.abs(cv2.GaussianBlur(b, (0, 0), s1) - cv2.GaussianBlur(b, (0, 0), s2))
                   .reshape(4, 16, 4, 16).mean((1, 3)).ravel()
                   for s1, s2 in ((0.7, 1.5), (1.5, 3.0), (3.0, 6.0))]
        rows.append(np.concatenate([a.ravel(), *texture, np.percentile(b, [5, 25, 50, 75, 95])]))
    return np.array(rows)


def difficulty(root: Path) -> tuple[float, float]:
    """Test AUROCs of a logistic regression: normal vs pneumonia, bacteria vs virus."""
    train_images, train_sub = _load(root, "train")
    test_images, test_sub = _load(root, "test")
    f_train, f_test = _features(train_images), _features(test_images)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=5000))
    clf.fit(f_train, train_sub != "normal")
    binary = roc_auc_score(test_sub != "normal", clf.predict_proba(f_test)[:, 1])
    tr, te = train_sub != "normal", test_sub != "normal"
    clf.fit(f_train[tr], train_sub[tr] == "virus")
    subtype = roc_auc_score(test_sub[te] == "virus", clf.predict_proba(f_test[te])[:, 1])
    return float(binary), float(subtype)


def test_demo_is_learnable_but_not_trivial_and_subtypes_overlap(tmp_path):
    """Over seeds 0-9 at this size and these counts: normal vs pneumonia 0.86-0.91 (mean
    0.89), bacteria vs virus 0.78-0.92 (mean 0.83); seed 7 gives 0.88 and 0.85."""
    root = tmp_path / "chest_xray"
    generate_demo(root, n_train=400, n_test=200, n_val=4, size=64, seed=7, progress=False)
    binary, subtype = difficulty(root)
    assert 0.80 <= binary <= 0.98, f"normal vs pneumonia AUROC {binary:.3f} out of band"
    assert 0.60 <= subtype < 0.97, f"bacteria vs virus AUROC {subtype:.3f} out of band"
    # exposure varies for every class, so brightness alone says little about the label
    images, sub = _load(root, "test")
    brightness = roc_auc_score(sub != "normal", [im.mean() for im in images])
    assert brightness < 0.75, f"mean brightness alone gives AUROC {brightness:.3f}"


# --- the pipeline script, DVC route -----------------------------------------------------------


def _dvc_params(stage: str) -> list[str]:
    """The ``--params`` keys of ``stage``'s command in dvc.yaml (the keys the stage reads)."""
    dvc = yaml.safe_load((Path(__file__).parents[1] / "dvc.yaml").read_text())
    tokens = shlex.split(dvc["stages"][stage]["cmd"])
    keys = tokens[tokens.index("--params") + 1:]
    return keys[:next((i for i, t in enumerate(keys) if t.startswith("--")), len(keys))]


DVC_DEMO_PARAMS = _dvc_params("make_demo")


def test_make_demo_script_writes_the_set_through_the_dvc_route(repo_root, tmp_path):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["demo"] = dict(SMALL, seed=7)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out, log = tmp_path / "demo" / "chest_xray", tmp_path / "logs" / "make_demo.log"
    cmd = [sys.executable, "workflow/scripts/make_demo.py", "--rule", "make_demo",
           "--output", f"root={out}", "--log", str(log), "--params", *DVC_DEMO_PARAMS,
           "--params-file", str(params_file),
           # as in dvc.yaml: the stage-defining params the command was generated for
           "--dag", *format_structure(dag_structure(load_params(params_file)))]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    direct = tmp_path / "direct"
    generate_demo(direct, **SMALL, seed=7, progress=False)
    assert digests(out) == digests(direct)
    assert "demo train: 40 images" in log.read_text()


def test_make_demo_script_refuses_a_filled_folder_with_one_clear_line(
        repo_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "chest_xray"
    (out / "train").mkdir(parents=True)
    (out / "train" / "stale.jpeg").write_bytes(b"stale")
    monkeypatch.chdir(repo_root)
    monkeypatch.setattr(sys, "argv", [
        "make_demo.py", "--rule", "make_demo", "--output", f"root={out}",
        "--params", *DVC_DEMO_PARAMS,
        "--dag", *format_structure(dag_structure(load_params("params.yaml")))])
    with pytest.raises(SystemExit) as exc:   # the same script, in-process (no second import)
        runpy.run_path("workflow/scripts/make_demo.py", run_name="__main__")
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "not empty" in err and str(out) in err and "Traceback" not in err
