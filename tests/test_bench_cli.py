"""Argument checks of the benchmark scripts that guard against silently wrong runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_classify_accuracy_three_class_only_needs_the_binary_checkpoint(tmp_path, capsys):
    bench = _load("classify_accuracy")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tasks", "three_class", "--root", str(tmp_path / "no_data"),
                    "--workdir", str(tmp_path / "work"),
                    "--out", str(tmp_path / "out.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "models/binary/resnet18/best.pt" in err and "--init-three_class none" in err
    assert not (tmp_path / "out.json").exists()
