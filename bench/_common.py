"""What every benchmark result records: the command, the commit and the machine."""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def commit(repo: str | Path = REPO) -> str:
    """HEAD of ``repo`` (this checkout, or another worktree a run was made in), with
    ``+uncommitted`` when the tree has changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True,
                               check=True).stdout.strip()
        return head + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """CPU model, core count, the SIMD flags that matter here and whether bf16 is native."""
    import torch

    flags, model = [], platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith("flags"))
        have = set(line.split(":", 1)[1].split())
        flags = sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx_vnni")
                       if f in have)
        model = next(ln for ln in text.splitlines() if ln.startswith("model name")).split(
            ":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": __import__("os").cpu_count(), "flags": flags,
            "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "torch": torch.__version__, "python": platform.python_version()}


def command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def write(path: str | Path, payload: dict[str, Any]) -> Path:
    """``payload`` with the command, commit and machine, as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {"command": command(), "commit": commit(), "machine": machine(), **payload}
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return path
