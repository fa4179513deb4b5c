"""ONNX export of a classifier checkpoint, and an ONNX Runtime forward for ``predict``.

``pneumocxr export results/models/binary/resnet18/best.pt`` writes ``best.onnx`` beside the
checkpoint: input ``input`` float32 (N, in_chans, S, S), normalised as in training
(``meta["normalization"]``, histogram-equalized first where it says ``equalize``:
:func:`pneumocxr.models.normalize`; ``S = meta["input_size"]``; N dynamic), outputs ``embedding``
(N, D, the pre-logits features the k-NN index was built from) and ``logits`` (N, C). The file's
metadata records the checkpoint's SHA-256, so a stale export (the model was retrained) is
refused instead of silently used. Export uses PyTorch's TorchScript-based exporter
(``dynamo=False``), which needs only the ``onnx`` package; the check runs both models on seeded
random images and on a constant image and compares the softmax
probabilities (:func:`check_onnx`; it fails above ``tolerance``, default 1e-4).

Why offer it: on CPU, ONNX Runtime runs the ResNet-18 forward of one 224-px image faster than
PyTorch eager (``bench/predict_speed.py``, numbers in ``bench/results/predict_speed.json``).
``onnx`` and ``onnxruntime`` are optional: without them every other command works and these
raise :class:`OnnxUnavailableError` naming the packages to install.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .checkpoint import file_sha256
from .logits import probabilities
from .models import Classifier, load_model

#: the versions this module was written and tested against (requirements-onnx pins)
ONNX_PINS = "onnx==1.23.2 onnxruntime==1.32.0"
META_KEY = "pneumocxr"


class OnnxUnavailableError(InputError):
    """``onnx`` / ``onnxruntime`` are not installed."""


def _import(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise OnnxUnavailableError(
            f"the ONNX backend needs the optional package {name!r}; install it with "
            f"`pip install {ONNX_PINS}` (or use the default PyTorch backend)") from None


class _Exported(nn.Module):
    """normalised images -> (embedding, logits) of a registry classifier."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.model.forward_head(self.model.trunk(x), pre_logits=True)
        return pre, self.model.logits(pre)


def default_output(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".onnx")


def export_onnx(checkpoint: str | Path, output: str | Path | None = None, *, opset: int = 18,
                check: bool = True, tolerance: float = 1e-4) -> dict[str, Any]:
    """Export ``checkpoint`` to ONNX (see module doc); returns a report (paths, check).

    Raises:
        OnnxUnavailableError: ``onnx`` (or, with ``check``, ``onnxruntime``) missing.
        ValueError: the exported model's probabilities differ from PyTorch's by more than
            ``tolerance`` (the file is removed).
    """
    onnx = _import("onnx")
    checkpoint = Path(checkpoint)
    model, meta = load_model(checkpoint)
    output = Path(output) if output is not None else default_output(checkpoint)
    output.parent.mkdir(parents=True, exist_ok=True)
    size, chans = int(meta["input_size"]), int(meta["in_chans"])
    example = torch.zeros(2, chans, size, size)
    tmp = output.with_name(output.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation / tracer notes
        torch.onnx.export(
            _Exported(model).eval(), (example,), str(tmp), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["embedding", "logits"],
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"},
                          "logits": {0: "batch"}})
    proto = onnx.load(str(tmp))
    info = {"checkpoint_sha256": file_sha256(checkpoint), "arch": meta["arch"],
            "task": meta.get("task"), "class_names": list(meta["class_names"]),
            "input_size": size, "in_chans": chans, "normalization": meta["normalization"]}
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(info, sort_keys=True)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(output)
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "onnx": str(output),
                              "opset": opset, **info}
    if check:
        try:
            report["check"] = check_onnx(model, meta, output, tolerance=tolerance)
        except ValueError:
            output.unlink(missing_ok=True)
            raise
    return report


def _session(path: Path, threads: int | None = None):
    ort = _import("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_onnx(model: Classifier, meta: dict[str, Any], onnx_path: str | Path, *,
               n: int = 4, seed: int = 0, tolerance: float = 1e-4) -> dict[str, float]:
    """Max abs difference between PyTorch and ONNX Runtime on ``n`` seeded random images and a
    constant one: of the probabilities (softmax of the logits), logits
    and embeddings. ValueError when the probabilities differ by more than ``tolerance``."""
    from .models import normalize

    size, chans = int(meta["input_size"]), int(meta["in_chans"])
    g = torch.Generator().manual_seed(seed)
    x01 = torch.cat([torch.rand(n, chans, size, size, generator=g),
                     torch.full((1, chans, size, size), 0.5)])
    x = normalize(x01, meta["normalization"])
    with torch.inference_mode():
        emb_t, logits_t = _Exported(model).eval()(x)
    emb_o, logits_o = _session(Path(onnx_path)).run(None, {"input": x.numpy()})
    diff = {
        "n_images": int(len(x)),
        "max_abs_diff_probabilities": float(np.abs(
            probabilities(logits_t.numpy()) - probabilities(logits_o)).max()),
        "max_abs_diff_logits": float(np.abs(logits_t.numpy() - logits_o).max()),
        "max_abs_diff_embeddings": float(np.abs(emb_t.numpy() - emb_o).max()),
        "tolerance": tolerance,
    }
    if not diff["max_abs_diff_probabilities"] <= tolerance:
        raise InputError(f"{onnx_path}: ONNX Runtime probabilities differ from PyTorch's by "
                         f"{diff['max_abs_diff_probabilities']:.3g} (> {tolerance}); the export "
                         "is not trustworthy")
    return diff


def onnx_forward(checkpoint: str | Path, onnx_path: str | Path | None = None,
                 threads: int | None = None
                 ) -> Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]:
    """``x -> (embeddings, logits)`` through ONNX Runtime for the export of ``checkpoint``.

    Raises ValueError when the export is missing or was made from another checkpoint.
    """
    onnx_path = Path(onnx_path) if onnx_path is not None else default_output(checkpoint)
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no ONNX export of {checkpoint}; run "
                         f"`pneumocxr export {checkpoint}` first")
    sess = _session(onnx_path, threads)
    props = sess.get_modelmeta().custom_metadata_map
    try:
        info = json.loads(props[META_KEY])
    except (KeyError, ValueError):
        raise InputError(f"{onnx_path}: not written by `pneumocxr export` (no {META_KEY!r} "
                         "metadata); export the checkpoint again") from None
    if info.get("checkpoint_sha256") != file_sha256(checkpoint):
        raise InputError(f"{onnx_path} was exported from another version of {checkpoint} "
                         f"(retrained since?); run `pneumocxr export {checkpoint}` again")

    def forward(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        emb, logits = sess.run(None, {"input": np.ascontiguousarray(x.numpy(), np.float32)})
        return emb, logits

    return forward
