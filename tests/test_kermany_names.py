"""Kermany file names -> label, subtype, patient; and the Kaggle-layout folder scan."""

from __future__ import annotations

import pandas as pd
import pytest

from pneumocxr.data.kermany import FileNameError, ParsedName, parse_filename, scan_kermany


@pytest.mark.parametrize("name, expected", [
    ("person1000_bacteria_2931.jpeg", ("PNEUMONIA", "bacteria", "person1000_bacteria")),
    ("person1000_virus_1681.jpeg", ("PNEUMONIA", "virus", "person1000_virus")),
    ("person447_virus_921_1.jpeg", ("PNEUMONIA", "virus", "person447_virus")),
    ("person1_bacteria_1.jpeg", ("PNEUMONIA", "bacteria", "person1_bacteria")),
    ("IM-0115-0001.jpeg", ("NORMAL", "normal", "IM-0115")),
    ("IM-0135-0001-0002.jpeg", ("NORMAL", "normal", "IM-0135")),
    ("NORMAL2-IM-0383-0001.jpeg", ("NORMAL", "normal", "NORMAL2-IM-0383")),
    ("NORMAL2-IM-1345-0001-0002.jpeg", ("NORMAL", "normal", "NORMAL2-IM-1345")),
    ("IM-0115-0001.JPEG", ("NORMAL", "normal", "IM-0115")),
    ("person5_virus_9.jpg", ("PNEUMONIA", "virus", "person5_virus")),
    ("IM-0001-0001.png", ("NORMAL", "normal", "IM-0001")),
])
def test_every_kermany_name_pattern_parses(name, expected):
    assert parse_filename(name) == ParsedName(*expected)


def test_parse_filename_uses_only_the_last_path_part():
    assert parse_filename("train/NORMAL/IM-0115-0001.jpeg").patient == "IM-0115"


@pytest.mark.parametrize("name", [
    "IMG_0001.jpeg",                       # no pattern
    "person12_fungal_3.jpeg",              # unknown subtype
    "person12_bacteria.jpeg",              # no image number
    "IM-0115-0001.bmp",                    # not jpeg/png
    "IM-0115-0001.jpeg.txt",
    "NORMAL3-IM-0001-0001.jpeg",
    "",
])
def test_unparseable_name_raises_clear_error(name):
    with pytest.raises(FileNameError, match="fits no Kermany file-name pattern"):
        parse_filename(name)
    assert issubclass(FileNameError, ValueError)


def test_patients_are_distinct_per_series_number_and_subtype():
    names = ["IM-0115-0001.jpeg", "IM-0117-0001.jpeg", "IM-0115-0002.jpeg",
             "NORMAL2-IM-0115-0001.jpeg", "person7_bacteria_1.jpeg", "person7_bacteria_2.jpeg",
             "person7_virus_3.jpeg"]
    patients = [parse_filename(n).patient for n in names]
    # same series number -> same patient; different number, prefix or subtype -> different
    assert patients[0] == patients[2]
    assert len({patients[0], patients[1], patients[3]}) == 3
    assert patients[4] == patients[5] != patients[6]


def test_parsed_names_match_the_manifest_for_all_shared_files(kermany_manifest):
    man = pd.read_csv(kermany_manifest)
    assert len(man) == 5232
    parsed = pd.DataFrame([parse_filename(n) for n in man["filename"]],
                          columns=["label", "subtype", "patient"])
    mismatched = man[(parsed["patient"] != man["patient_key"]).to_numpy()]
    assert mismatched.empty, mismatched[["filename", "patient_key"]].head()
    assert (parsed["label"] == man["label"]).all()
    assert (parsed["subtype"] == man["subtype"]).all()
    # the grouping has the manifest's granularity (it would fail if e.g. every normal image
    # collapsed into one patient)
    assert parsed["patient"].nunique() == man["patient_key"].nunique()
    normal = parsed["label"] == "NORMAL"
    assert parsed.loc[normal, "patient"].nunique() == man.loc[normal, "patient_key"].nunique()


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_scan_lists_files_sorted_and_skips_hidden_files(tmp_path):
    for split in ("train", "val", "test"):
        _touch(tmp_path / split / "NORMAL" / "IM-0002-0001.jpeg")
        _touch(tmp_path / split / "NORMAL" / "IM-0001-0001.jpeg")
        _touch(tmp_path / split / "PNEUMONIA" / "person1_virus_1.jpeg")
        _touch(tmp_path / split / "PNEUMONIA" / ".DS_Store")
    files = scan_kermany(tmp_path)
    assert [f.rel for f in files[:3]] == [
        "train/NORMAL/IM-0001-0001.jpeg", "train/NORMAL/IM-0002-0001.jpeg",
        "train/PNEUMONIA/person1_virus_1.jpeg"]
    assert [f.split for f in files] == ["train"] * 3 + ["val"] * 3 + ["test"] * 3
    assert not any(".DS_Store" in f.rel for f in files)


def test_scan_accepts_a_layout_without_val(tmp_path):
    for split in ("train", "test"):
        for cls, name in (("NORMAL", "IM-0001-0001.jpeg"), ("PNEUMONIA", "person1_virus_1.jpeg")):
            _touch(tmp_path / split / cls / name)
    assert {f.split for f in scan_kermany(tmp_path)} == {"train", "test"}


def test_scan_missing_folder_names_layout_sources_and_demo(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        scan_kermany(tmp_path / "nope")
    msg = str(err.value)
    for needle in ("nope", "{train,val,test}/{NORMAL,PNEUMONIA}",
                   "paultimothymooney/chest-xray-pneumonia", "10.17632/rscbjbr9sj.2",
                   "config/demo.yaml", "make demo"):
        assert needle in msg


def test_scan_wrong_layout_names_the_folder_and_suggests_nested_root(tmp_path):
    _touch(tmp_path / "chest_xray" / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    with pytest.raises(ValueError, match=r"missing split folder\(s\) train, test.*"
                                         r"did you mean data.root: .*chest_xray"):
        scan_kermany(tmp_path)


def test_scan_empty_class_folder_is_a_clear_error(tmp_path):
    for split in ("train", "test"):
        _touch(tmp_path / split / "NORMAL" / "IM-0001-0001.jpeg")
        (tmp_path / split / "PNEUMONIA").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"PNEUMONIA holds no files"):
        scan_kermany(tmp_path)


def test_scan_missing_class_folder_is_a_clear_error(tmp_path):
    for split in ("train", "test"):
        _touch(tmp_path / split / "NORMAL" / "IM-0001-0001.jpeg")
    with pytest.raises(ValueError, match=r"missing class folder .*train.PNEUMONIA"):
        scan_kermany(tmp_path)


def test_scan_rejects_a_file_as_root(tmp_path):
    f = tmp_path / "data.npz"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="data.source medmnist"):
        scan_kermany(f)
