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

from .errors import InputError, MissingInputError
from .utils import jsonable

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


#: Version of the ``best.pt`` layout. 1: ``{"model", "meta"}`` with the temperature and the
#: operating threshold in ``meta`` (before the calibrate stage); 2: ``{"format", "kind",
#: "model", "meta"}``, the operating point in ``calibration.json`` beside it.
CHECKPOINT_FORMAT = 2
KINDS = ("classifier", "autoencoder")


def save_checkpoint(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any],
                    *, kind: str) -> Path:
    """Write a ``best.pt``: weights (a CPU state dict) and metadata, atomically.

    No clock time goes in, so the same weights and metadata give the same bytes.
    """
    if kind not in KINDS:
        raise InputError(f"checkpoint kind must be one of {KINDS}, got {kind!r}")
    # metadata as canonical JSON: a pickled dict's bytes depend on object identity (shared
    # or interned strings), so a resumed run could write other bytes for the same content
    return atomic_save({"format": CHECKPOINT_FORMAT, "kind": kind, "model": state,
                        "meta": json.dumps(jsonable(meta), sort_keys=True)}, path)


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save_checkpoint` onto the CPU.

    A file of another format version, or of another ``kind`` than asked for, is an
    :class:`~pneumocxr.errors.InputError` that names both.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for corrupt files
        raise InputError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise InputError(f"{path}: not a pneumocxr checkpoint (expected keys 'model' and 'meta')")
    found = ckpt.get("format", 1)
    if found != CHECKPOINT_FORMAT:
        raise InputError(
            f"{path}: checkpoint format {found}, but this pneumocxr reads format "
            f"{CHECKPOINT_FORMAT} (format 1 kept the operating threshold inside best.pt; it "
            "now lives in calibration.json): retrain it with this version (rerun the pipeline)")
    if kind is not None and ckpt.get("kind") != kind:
        raise InputError(f"{path}: the checkpoint is of kind {ckpt.get('kind')!r}, expected "
                         f"{kind!r}")
    return {**ckpt, "meta": json.loads(ckpt["meta"])}
