"""Shared figure conventions: headless backend, titles that say when data is synthetic."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SYNTHETIC_TAG = "SYNTHETIC demo data"


def title(text: str, data_source: str) -> str:
    """Figure title; demo runs are labelled synthetic so no reader mistakes them for real."""
    return f"{text}\n[{SYNTHETIC_TAG}]" if data_source == "demo" else f"{text} [{data_source}]"


def save(fig: "plt.Figure", path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
