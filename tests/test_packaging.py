"""Packaging matches the code: every third-party import is declared, package data exists."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

#: import name -> distribution name, where they differ
DISTRIBUTIONS = {"cv2": "opencv-python", "PIL": "pillow", "sklearn": "scikit-learn",
                 "yaml": "pyyaml"}


def _declared(spec: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", s, maxsplit=1)[0].lower() for s in spec}


def _imports(package: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in package.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "pneumocxr":
                    found.setdefault(top, set()).add(f.name)
    return found


def test_pyproject_declares_every_third_party_module_the_package_imports(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    core = _declared(project["dependencies"])
    extras = set().union(*(_declared(v) for v in project["optional-dependencies"].values()))
    used = _imports(repo_root / "src/pneumocxr")
    # optional at run time: imported lazily where needed, declared as extras
    optional = {"pydicom", "onnx", "onnxruntime", "snakemake"}
    for module, files in used.items():
        dist = DISTRIBUTIONS.get(module, module).lower()
        where = extras if module in optional else core
        assert dist in where, f"{module} (imported by {sorted(files)}) is not declared"


def test_declared_package_data_exists_and_requirements_pin_the_core(repo_root):
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    for name in pyproject["tool"]["setuptools"]["package-data"]["pneumocxr"]:
        assert (repo_root / "src/pneumocxr" / name).is_file(), name
    pins = _declared([ln for ln in (repo_root / "requirements.txt").read_text().splitlines()
                      if ln.strip() and not ln.startswith("#")])
    assert _declared(pyproject["project"]["dependencies"]) <= pins
