"""Checkpoints (state dicts + metadata) and the resume cache of long-running stages.

Snakemake and DVC delete a job's declared outputs before they rerun it, so resume state cannot
live in those outputs. It lives in a cache outside them::

    .cache/resume/<stage>/<key>/state.pt

where ``key`` hashes everything that determines the stage's result (its params, the input data
fingerprint). Rerunning the same command after an interruption finds the same key and resumes
from the last finished epoch; changing a param gives a new key and a fresh start. The cache is
safe to delete at any time (``rm -rf .cache/resume``); it is git- and DVC-ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESUME_ROOT = Path(os.environ.get("PNEUMOCXR_RESUME_DIR", ".cache/resume"))


def params_key(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (params dicts, data fingerprints)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file, then rename: a kill never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


class ResumeCache:
    """Resume state of one stage run, keyed by what determines its result."""

    def __init__(self, stage: str, key: str, root: str | Path | None = None):
        self.dir = Path(root or RESUME_ROOT) / stage / key
        self.path = self.dir / "state.pt"

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is nothing to resume."""
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def save(self, state: dict[str, Any]) -> None:
        atomic_save(state, self.path)

    def clear(self) -> None:
        if self.path.is_file():
            self.path.unlink()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint saved by this package (state dict + metadata) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for corrupt files
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise ValueError(f"{path}: not a pneumocxr checkpoint (expected keys 'model' and 'meta')")
    return ckpt
