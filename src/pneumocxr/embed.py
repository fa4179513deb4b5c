"""Embeddings of the trained classifiers: extraction, storage, t-SNE maps, separability.

Every classifier of :mod:`pneumocxr.models` exposes ``forward_features`` and ``forward_head``
(timm's interface), so the embedding of an image is, for every architecture::

    model.forward_head(model.forward_features(x), pre_logits=True)     # (N, D)

and the network's own logits come from the same features (``forward_head(features)``), so one
pass gives both: the k-NN classifier and the network head are compared on the same images.

The ``embed`` stage writes one ``.npz`` per task and architecture (default
``results/embed/{task}/{arch}/embeddings.npz``), read back by :func:`load_embeddings`::

    meta                 JSON string: task, arch, class_names, data_source, normalization,
                         in_chans, input_size, checkpoint, splits, embedding_dim
    <split>.embeddings   float32 (N, D)   penultimate-layer embedding
    <split>.logits       float32 (N, C)   the network head's logits
    <split>.y            int64 (N,)       class index of the task (0..C-1; class_names order)
    <split>.file         str (N,)         image id: ``file`` column of metadata.csv
    <split>.label        str (N,)         NORMAL / PNEUMONIA
    <split>.subtype      str (N,)         normal / bacteria / virus / unknown
    <split>.patient      str (N,)         patient id

for ``<split>`` in ``train``, ``val``, ``test``. Strings are stored as fixed-width unicode
arrays, so the file loads without pickle. The ``tsne_knn`` stage reads it
(:func:`pneumocxr.tsne_knn.run_tsne_knn`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import InputError, MissingInputError
from .datasets import TASKS, load_task_split, to_float
from .models import normalize

log = logging.getLogger(__name__)

EMBED_SPLITS = ("train", "val", "test")
_ARRAY_FIELDS = ("embeddings", "logits", "y", "file", "label", "subtype", "patient")

# --------------------------------------------------------------------------------------------
# extraction


def _check_normalization(normalization: Mapping[str, Any], in_chans: int) -> None:
    """``{"mean": m, "std": s}`` with one value or one per input channel, std > 0."""
    if not isinstance(normalization, Mapping) or not {"mean", "std"} <= set(normalization):
        raise InputError(
            f"normalization must be a mapping with 'mean' and 'std' (the checkpoint's "
            f"meta['normalization']), got {normalization!r}"
        )
    for name in ("mean", "std"):
        n = torch.as_tensor(normalization[name], dtype=torch.float32).numel()
        if n not in (1, in_chans):
            raise InputError(
                f"normalization {name} has {n} values but the model takes {in_chans} "
                "input channel(s); give one value or one per channel"
            )
    if torch.any(torch.as_tensor(normalization["std"], dtype=torch.float32) <= 0):
        raise InputError(f"normalization std must be positive, got {normalization['std']}")


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def extract_embeddings(
    model: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 64,
    normalization: Mapping[str, Any],
    in_chans: int = 1,
    input_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    return_logits: bool = False,
    channels_last: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Penultimate-layer embeddings of uint8 images, float32 ``(N, D)``.

    The classifier's own input path (:func:`pneumocxr.datasets.to_float`,
    :func:`pneumocxr.models.normalize`): images are scaled to [0, 1], resized to ``input_size``
    when it differs from theirs (the checkpoint's ``meta["input_size"]``), and normalised with
    the checkpoint's ``mean``/``std``; a one-channel image is repeated to ``in_chans`` channels
    when the model takes more. Runs in fp32 and eval mode without gradients, in batches of
    ``batch_size``, on the model's device (or ``device``, which moves the model there). The
    model's train/eval mode is restored afterwards.

    Args:
        model: a classifier exposing ``forward_features`` and ``forward_head(x, pre_logits)``.
        images: uint8 array ``(N, H, W)`` (a prepared split's images; may be memory-mapped).
        return_logits: also return the head's logits ``(N, C)`` computed from the same features.
        channels_last: run in the channels-last memory format (about 1.25x faster for ResNet-18
            on CPU; values agree to ~1e-5). The model is converted in place and left so; its
            weights do not change.
    """
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise InputError(
            f"{type(model).__name__} has no forward_features/forward_head; build the model with "
            "pneumocxr.models.create_model"
        )
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise InputError(
            f"images must be a uint8 array (N, H, W) as written by prepare, got dtype "
            f"{images.dtype} and shape {images.shape}"
        )
    if len(images) == 0:
        raise InputError("no images to embed (the array is empty)")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if device is not None:
        model.to(torch.device(device))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    dev = _model_device(model)
    _check_normalization(normalization, in_chans)

    n = len(images)
    embeddings: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, n, batch_size), desc="embed", unit="batch",
                              disable=not progress, leave=False):
                batch = np.array(images[start:start + batch_size])  # a writable copy of the mmap
                x = to_float(torch.from_numpy(batch).unsqueeze(1).to(dev), input_size)
                if in_chans > 1:
                    x = x.expand(-1, in_chans, -1, -1)
                x = normalize(x, normalization)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                features = model.forward_features(x)
                emb = model.forward_head(features, pre_logits=True)
                if emb.ndim != 2:
                    raise InputError(
                        f"{type(model).__name__}.forward_head(pre_logits=True) returned shape "
                        f"{tuple(emb.shape)}; an embedding must be (N, D)"
                    )
                embeddings.append(emb.float().cpu().numpy())
                if return_logits:
                    logits.append(model.forward_head(features).float().cpu().numpy())
    finally:
        model.train(was_training)
    emb_all = np.concatenate(embeddings).astype(np.float32, copy=False)
    if return_logits:
        return emb_all, np.concatenate(logits).astype(np.float32, copy=False)
    return emb_all


# --------------------------------------------------------------------------------------------
# storage


@dataclass
class SplitEmbeddings:
    """Embeddings of one split with the image ids and labels they belong to."""

    split: str
    embeddings: np.ndarray
    logits: np.ndarray
    y: np.ndarray
    file: np.ndarray
    label: np.ndarray
    subtype: np.ndarray
    patient: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        for name in _ARRAY_FIELDS:
            if len(getattr(self, name)) != n:
                raise InputError(
                    f"split {self.split!r}: {name} has {len(getattr(self, name))} rows, "
                    f"embeddings {n}"
                )

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def head_pred(self) -> np.ndarray:
        """The network head's predicted class (argmax of the logits)."""
        return self.logits.argmax(axis=1).astype(np.int64)

    @property
    def head_proba(self) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits), dim=1).numpy()

    @property
    def has_subtypes(self) -> bool:
        return not bool(np.any(self.subtype == "unknown"))


@dataclass
class EmbeddingSet:
    """All embedded splits of one model (task, architecture)."""

    task: str
    arch: str
    class_names: list[str]
    data_source: str
    splits: dict[str, SplitEmbeddings]
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, split: str) -> SplitEmbeddings:
        if split not in self.splits:
            raise KeyError(f"split {split!r} not embedded; have {sorted(self.splits)}")
        return self.splits[split]

    @property
    def dim(self) -> int:
        return int(next(iter(self.splits.values())).embeddings.shape[1])

    def __repr__(self) -> str:
        sizes = {k: len(v) for k, v in self.splits.items()}
        return (f"EmbeddingSet(task={self.task!r}, arch={self.arch!r}, dim={self.dim}, "
                f"classes={self.class_names}, source={self.data_source!r}, splits={sizes})")


def save_embeddings(emb: EmbeddingSet, path: str | Path) -> Path:
    """Write ``emb`` to one ``.npz`` (layout in the module docstring); atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(emb.info)
    meta.update(task=emb.task, arch=emb.arch, class_names=list(emb.class_names),
                data_source=emb.data_source, splits=list(emb.splits), embedding_dim=emb.dim)
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta, sort_keys=True))}
    for split, se in emb.splits.items():
        for name in _ARRAY_FIELDS:
            value = np.asarray(getattr(se, name))
            if value.dtype == object:
                value = value.astype(str)
            arrays[f"{split}.{name}"] = value
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
    return path


def load_embeddings(path: str | Path) -> EmbeddingSet:
    """Read an embeddings file written by :func:`save_embeddings`."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: embeddings file not found; run the embed stage first")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable .npz embeddings file ({err})") from None
    if not hasattr(data, "files"):
        raise InputError(f"{path}: a single array, not an .npz embeddings file; rerun embed")
    with data:
        if "meta" not in data.files:
            raise InputError(f"{path}: no 'meta' entry; not written by pneumocxr.embed")
        meta = json.loads(str(data["meta"]))
        splits = {}
        for split in meta["splits"]:
            missing = [f"{split}.{n}" for n in _ARRAY_FIELDS if f"{split}.{n}" not in data.files]
            if missing:
                raise InputError(f"{path}: missing arrays {missing}; rerun the embed stage")
            arrays = {n: data[f"{split}.{n}"] for n in _ARRAY_FIELDS}
            splits[split] = SplitEmbeddings(split, **arrays)
    info = {k: v for k, v in meta.items()
            if k not in ("task", "arch", "class_names", "data_source", "splits")}
    return EmbeddingSet(meta["task"], meta["arch"], list(meta["class_names"]),
                        meta["data_source"], splits, info)


# --------------------------------------------------------------------------------------------
# from a checkpoint and the prepared arrays


def embed_splits(
    model: nn.Module,
    processed_dir: str | Path,
    *,
    task: str,
    arch: str,
    normalization: Mapping[str, Any],
    in_chans: int = 1,
    input_size: int | None = None,
    splits: Sequence[str] = EMBED_SPLITS,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool = True,
    channels_last: bool = False,
    info: Mapping[str, Any] | None = None,
) -> EmbeddingSet:
    """Embed each split of the prepared ``plain`` arrays with ``model``, labelled for ``task``
    (``binary``: normal / pneumonia; ``three_class``: normal / bacteria / virus); one pass per split.
    """
    out: dict[str, SplitEmbeddings] = {}
    data_source = "unknown"
    class_names = list(TASKS.get(task, ()))
    for split in splits:
        data, data_source = load_task_split(processed_dir, split, task)
        log.info("embedding %s: %r", split, data)
        emb, logits = extract_embeddings(
            model, data.images, batch_size=batch_size, normalization=normalization,
            in_chans=in_chans, input_size=input_size, device=device, progress=progress,
            return_logits=True, channels_last=channels_last)
        if logits.shape[1] != len(class_names):
            raise InputError(
                f"the model has {logits.shape[1]} outputs but task {task!r} has "
                f"{len(class_names)} classes {class_names}; use the {task} checkpoint"
            )
        meta = data.meta
        out[split] = SplitEmbeddings(
            split, emb, logits, data.labels,
            meta["file"].to_numpy().astype(str), meta["label"].to_numpy().astype(str),
            meta["subtype"].to_numpy().astype(str), meta["patient"].to_numpy().astype(str))
    info = dict(info or {})
    info.update(normalization=dict(normalization), in_chans=in_chans, input_size=input_size)
    return EmbeddingSet(task, arch, class_names, data_source, out, info)


def run_embed(
    checkpoint: str | Path,
    processed_dir: str | Path,
    output: str | Path,
    *,
    batch_size: int,
    channels_last: bool,
    splits: Sequence[str] = EMBED_SPLITS,
    device: str = "auto",
    progress: bool = False,
) -> EmbeddingSet:
    """The ``embed`` stage: ``best.pt`` + prepared arrays -> ``embeddings.npz``.

    The task, architecture, classes, input size and normalization come from the checkpoint's
    metadata, so the images go through exactly the classifier's input path.
    """
    from .models import check_input_size, load_model
    from .utils import resolve_device

    model, meta = load_model(checkpoint)
    task = meta.get("task")
    if task not in TASKS:
        raise InputError(f"{checkpoint}: checkpoint task {task!r} is not one of {sorted(TASKS)}")
    if list(meta["class_names"]) != list(TASKS[task]):
        raise InputError(f"{checkpoint}: classes {meta['class_names']} differ from task "
                         f"{task!r} ({list(TASKS[task])}); retrain the checkpoint")
    if "normalization" not in meta:
        raise InputError(f"{checkpoint}: checkpoint metadata lacks 'normalization'; retrain it")
    input_size = meta.get("input_size")
    if input_size is not None:
        check_input_size(meta["arch"], int(input_size))
    emb = embed_splits(
        model, processed_dir, task=task, arch=meta["arch"], normalization=meta["normalization"],
        in_chans=int(meta["in_chans"]), input_size=None if input_size is None else int(input_size),
        splits=splits, batch_size=batch_size, device=resolve_device(device), progress=progress,
        channels_last=channels_last, info={"checkpoint": str(checkpoint)})
    save_embeddings(emb, output)
    log.info("wrote %s: %r", output, emb)
    return emb
