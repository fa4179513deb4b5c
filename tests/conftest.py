"""Shared fixtures. Real-data tests read ../shared/data and skip cleanly when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def kermany_root() -> Path:
    """The shared Kermany folder in the Kaggle layout (read-only)."""
    root = SHARED_DATA / "kermany" / "chest_xray"
    if not root.is_dir():
        pytest.skip(f"real data not available at {root}")
    return root


@pytest.fixture(scope="session")
def kermany_manifest() -> Path:
    path = SHARED_DATA / "kermany" / "manifest.csv"
    if not path.is_file():
        pytest.skip(f"real data manifest not available at {path}")
    return path


@pytest.fixture(scope="session")
def medmnist_npz() -> Path:
    path = SHARED_DATA / "medmnist" / "pneumoniamnist_dev.npz"
    if not path.is_file():
        pytest.skip(f"PneumoniaMNIST npz not available at {path}")
    return path
