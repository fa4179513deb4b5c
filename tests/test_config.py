"""params.yaml, the overlays in config/, and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pneumocxr.cli import main as cli_main
from pneumocxr.config import ParamsError, deep_merge, flatten, load_params, validate


def test_params_yaml_is_valid_and_defaults_to_real_kermany_data(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    params = load_params("params.yaml")
    assert params["data"]["source"] == "kermany"
    assert params["data"]["root"] == "data/raw/chest_xray"
    assert (params["prepare"]["resize"], params["prepare"]["crop"]) == (256, 224)


OVERLAYS = sorted(p.name for p in (Path(__file__).parents[1] / "config").glob("*.yaml"))


def test_demo_overlay_exists():
    assert "demo.yaml" in OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_merges_into_valid_params(repo_root, monkeypatch, overlay):
    monkeypatch.chdir(repo_root)
    path = repo_root / "config" / overlay
    params = load_params("params.yaml", [path])
    for key, value in flatten(yaml.safe_load(path.read_text())).items():
        node = params
        for part in key.split("."):
            node = node[part]
        assert node == value, key


def test_deep_merge_overrides_nested_keys_and_keeps_the_rest():
    base = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    merged = deep_merge(base, {"a": {"b": 5}, "l": [3]})
    assert merged == {"a": {"b": 5, "c": 2}, "l": [3]}
    assert base["a"]["b"] == 1  # input untouched


def test_invalid_value_is_reported_with_its_dotted_key(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    params = load_params("params.yaml")
    params["prepare"]["crop"] = 4
    with pytest.raises(ParamsError, match=r"prepare\.crop"):
        validate(params)


def test_unknown_data_source_is_rejected(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    params = load_params("params.yaml")
    params["data"]["source"] = "imagenet"
    with pytest.raises(ParamsError, match=r"data\.source"):
        validate(params)


def test_a_joint_head_on_a_source_without_subtypes_is_rejected(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    params = load_params("params.yaml")
    params["data"]["source"] = "medmnist"
    params["train"]["joint_head"] = True
    with pytest.raises(ParamsError, match=r"train\.joint_head: true needs bacteria/virus labels, "
                                          r"and data\.source=medmnist has none"):
        validate(params)


def test_crop_larger_than_resize_is_rejected(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    params = load_params("params.yaml")
    params["prepare"].update(resize=64, crop=128)
    with pytest.raises(ParamsError, match="must not exceed"):
        validate(params)


def test_missing_params_file_names_the_file(tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    with pytest.raises(ParamsError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")


def test_overlay_prints_as_dvc_set_flags(repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    assert cli_main(["params", "--overlay", "config/demo.yaml", "--dvc-set"]) == 0
    out = capsys.readouterr().out
    # one word per flag value (no quotes), so `dvc exp run $(pneumocxr params --dvc-set ...)`
    # survives the shell's word split
    assert "-S data.source=demo " in out
    assert "-S prepare.crop=64 " in out
