"""Run-wide helpers: determinism, device and thread resolution."""

from __future__ import annotations

import json
import logging
import math
import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .errors import InputError, RunError

log = logging.getLogger(__name__)


def set_determinism(seed: int, deterministic_algorithms: bool = True) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic kernels.

    DataLoader workers derive their seeds from torch's, so seeding here covers them too
    (pass ``worker_init_fn=seed_worker`` when workers use numpy).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic_algorithms:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:  # pragma: no cover - runs in worker processes
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu. ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("device: cuda was requested but no CUDA GPU is visible; use auto or cpu")
    if name not in ("cpu", "cuda"):
        raise InputError(f"device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def set_threads(n: int) -> int:
    """Make torch, OpenCV and the BLAS / OpenMP pools of NumPy, SciPy and scikit-learn use
    ``n`` threads, the rule's ``threads``. Returns ``n``.

    Summation order follows the thread count, so a step gives the same bytes for the same
    ``n`` under both engines (Snakemake sets OMP_NUM_THREADS for its jobs; DVC does not).
    """
    from threadpoolctl import threadpool_limits

    n = max(1, int(n))
    torch.set_num_threads(n)
    threadpool_limits(limits=n)
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:  # pragma: no cover
        pass
    return n


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, NaN and inf become ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON (NaN -> null, so every reader accepts it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(obj), indent=2) + "\n")
    return path
