"""Training of the classifiers: plain functions, resumable, deterministic.

* :func:`train_one_epoch` -- one pass over the in-memory training arrays (augmented on tensors).
* :func:`fit` -- the whole run on two :class:`~pneumocxr.datasets.ArrayDataset` (train, val):
  model selection on ``val``; ``best.pt``, the history CSV and the selected model's val
  predictions (which the ``calibrate`` stage turns into a temperature and an operating point).
* :func:`run_training` -- the ``train`` stage: prepared data folder in, those three files out.

The recipe is a :class:`~pneumocxr.settings.TrainSettings` (params ``train`` with the task's
overrides); its defaults and ranges live in the params schema only. Outputs hold no clock
time, so the same inputs, params, machine, thread count, device and precision (all recorded
in ``best.pt``) give the same bytes; epoch times and images/s go to the log.

Resume: after every epoch the full state (model, optimizer, scheduler, python/numpy/torch RNG,
the augmentation generator, epoch, best-so-far, history) is written to
``ResumeCache("train/<task>/<arch>", key)`` (``.cache/resume/...``; see
:mod:`pneumocxr.checkpoint`), the best weights beside it. ``key`` hashes the params, seed, data,
initial weights, thread count, device and library versions, so rerunning the same command after
a kill resumes from the last finished epoch and ends bitwise-identical to an uninterrupted run,
while any change starts afresh. ``best.pt`` holds no optimizer state.

Precision: ``bf16`` runs forward passes under ``torch.autocast`` (weights and optimizer stay
fp32); ``auto`` picks it only where the CPU has native bf16 (AVX512-BF16/AMX) or on CUDA with
bf16 support -- on plain AVX2 emulated bf16 is many times slower than fp32. ``fp16`` (CUDA
only; ``auto`` on GPUs without bf16) adds a GradScaler, whose state is part of the resume state.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import sklearn
import torch
import torchvision
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import ResumeCache, file_sha256, load_checkpoint, params_key, save_checkpoint
from .codedeps import code_fingerprint, module_closure
from .fitloop import Trainable, cpu_state, run_epochs
from .data.arrays import preprocess_meta
from .datasets import (Augment, ArrayDataset, balanced_sample_weights, check_task, epoch_indices,
                       iterate_batches, load_task_split, to_float)
from .errors import InputError, RunError
from .inference import autocast_dtype, predict_logits
from .logits import probabilities, write_predictions
from .losses import build_criterion
from .models import (check_input_size, create_model, default_normalization, get_model_spec,
                     normalize)
from .settings import TrainSettings
from .utils import resolve_device, set_determinism

log = logging.getLogger(__name__)

SELECT = ("val_auroc", "val_loss", "val_accuracy")
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                   "val_auroc", "lr")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where it is native (CUDA with bf16, CPU with AVX512-BF16/AMX),
    ``fp16`` on older CUDA GPUs (with loss scaling), else ``fp32``. ``fp16`` needs CUDA."""
    if precision == "fp16" and device.type != "cuda":
        raise InputError("train.precision fp16 needs a CUDA device (loss-scaled half precision); "
                         "use bf16 or fp32 on CPU")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


# ----------------------------------------------------------------------------- building blocks


def make_optimizer(model: torch.nn.Module, p: TrainSettings) -> torch.optim.Optimizer:
    """SGD with momentum (the study) or AdamW; weight decay on every parameter, as in the study."""
    if p.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum,
                               weight_decay=p.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, p: TrainSettings,
                   steps_per_epoch: int) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, str]:
    """``(scheduler, when)``: one-cycle stepped per batch, StepLR per epoch, or none."""
    if p.schedule == "onecycle":
        total = p.epochs * steps_per_epoch
        if p.warmup * total <= 1:
            raise InputError(
                f"train params: the one-cycle schedule needs warmup * epochs * batches per epoch "
                f"> 1, got {p.warmup} * {p.epochs} * {steps_per_epoch}; train longer, use "
                "a smaller batch_size, or schedule: constant")
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=p.lr, total_steps=total, pct_start=p.warmup,
            cycle_momentum=False), "batch"
    if p.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=p.step_size,
                                               gamma=p.step_gamma), "epoch"
    return None, "never"


def make_averaged(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and buffers (batch-norm
    statistics), ``decay`` per step; ``None`` when ``decay`` is 0 (``train.ema``)."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def progressive_schedule(input_size: int, p: TrainSettings, arch: str) -> tuple[int, int]:
    """``(side, epochs)`` of progressive resolution: the first ``epochs`` train at ``side``
    (``train.progressive_scale`` of ``input_size``, rounded to a multiple of 8 and at least
    the architecture's minimum), the rest at ``input_size``; ``(input_size, 0)`` when off."""
    if p.progressive_scale >= 1.0:
        return input_size, 0
    side = max(8 * round(input_size * p.progressive_scale / 8), get_model_spec(arch).min_input_size)
    n_low = round(p.epochs * p.progressive_epochs)
    if side >= input_size or n_low == 0:
        return input_size, 0
    return int(side), int(n_low)


def train_one_epoch(
    model: torch.nn.Module,
    data: ArrayDataset,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    normalization: Mapping[str, Any],
    batch_size: int,
    generator: torch.Generator,
    augment: Augment | None = None,
    input_size: int | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    sample_weights: np.ndarray | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    averaged: AveragedModel | None = None,
    mixup: float = 0.0,
) -> dict[str, float]:
    """One epoch over ``data`` (last incomplete batch dropped); ``scheduler`` steps per batch;
    ``scaler`` scales the loss (fp16 on CUDA); ``averaged`` is updated after every step.
    ``mixup`` > 0 trains on mixup pairs (Zhang et al. 2018): each batch is blended with a
    shuffled copy of itself by ``lam ~ Beta(mixup, mixup)`` and the loss is the same blend of
    the two labels' losses; the pairs and ``lam`` come from ``generator``.

    Returns mean loss, accuracy, images seen, seconds and images/s.
    """
    device = next(model.parameters()).device
    amp = autocast_dtype(precision, device)
    model.train()
    order = epoch_indices(len(data), generator, sample_weights=sample_weights)
    n_batches = len(order) // batch_size
    loss_sum, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    for xb, yb in tqdm(iterate_batches(data, batch_size, order, drop_last=True), total=n_batches,
                       desc="train", disable=not progress, leave=False):
        if augment is not None:
            x = augment(to_float(xb), generator, size=input_size)
        else:
            x = to_float(xb, input_size)
        x = normalize(x.to(device), normalization)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = yb.to(device)
        if mixup > 0:
            lam = float(np.random.default_rng(
                int(torch.randint(2**31, (1,), generator=generator))).beta(mixup, mixup))
            pair = torch.randperm(len(y), generator=generator).to(device)
            x = lam * x + (1.0 - lam) * x[pair]
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
        scores = logits.float()
        loss = criterion(scores, y)
        if mixup > 0:
            loss = lam * loss + (1.0 - lam) * criterion(scores, y[pair])
        if not torch.isfinite(loss):
            raise RunError(f"training diverged: loss is {loss.item()} (lower train.lr)")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if averaged is not None:
            averaged.update_parameters(model)
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum / seen, "accuracy": correct / seen, "images": seen,
            "seconds": seconds, "images_per_s": seen / seconds if seconds > 0 else float("nan")}


def val_metrics(logits: np.ndarray, labels: np.ndarray,
                criterion: torch.nn.Module) -> dict[str, float]:
    """Loss (the training criterion), accuracy and AUROC (binary / macro one-vs-rest)."""
    dev = next(iter(criterion.buffers()), torch.zeros(0)).device
    with torch.no_grad():
        loss = float(criterion(torch.from_numpy(logits).to(dev), torch.from_numpy(labels).to(dev)))
    probs = probabilities(logits)
    if probs.shape[1] == 2:
        auroc = roc_auc_score(labels, probs[:, 1])
    else:
        auroc = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    return {"loss": loss, "accuracy": float((probs.argmax(1) == labels).mean()),
            "auroc": float(auroc)}


def _selection_score(select: str, m: Mapping[str, float]) -> tuple[float, ...]:
    """Larger is better; ties on the primary metric go to the lower val loss."""
    if select == "val_loss":
        return (-m["loss"],)
    return (m[select.removeprefix("val_")], -m["loss"])


def _fingerprint(*datasets: ArrayDataset) -> str:
    h = hashlib.sha256()
    for ds in datasets:
        h.update(str(ds.images.shape).encode())
        h.update(memoryview(np.ascontiguousarray(ds.images)).cast("B"))
        h.update(ds.labels.tobytes())
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    return {"pneumocxr": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__}


def write_history(rows: list[dict[str, float]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)).to_csv(path, index=False,
                                                            float_format="%.6g")
    return path


# ----------------------------------------------------------------------------- the run


def fit(
    train: ArrayDataset,
    val: ArrayDataset,
    *,
    arch: str,
    task: str,
    params: TrainSettings | Mapping[str, Any] | None,
    model_path: str | Path,
    history_path: str | Path,
    val_predictions_path: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    init: str | Path = "none",
    data_source: str = "unknown",
    resume: bool = True,
    resume_root: str | Path | None = None,
    progress: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    preprocess: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``arch`` for ``task`` on ``train``, select on ``val``, write ``best.pt`` and history.

    Args:
        params: the task's recipe (:class:`~pneumocxr.settings.TrainSettings`, or a mapping of
            ``train`` keys completed by the schema's defaults).
        init: ``none`` (from scratch), ``imagenet``, or a ``best.pt`` of the same architecture
            to start from (the three-class model starts from the binary one; its head is
            replaced).
        val_predictions_path: where to write the selected model's val logits (the input of
            the ``calibrate`` stage).
        resume: continue from the resume cache when it holds a matching state.
        on_epoch_end: called with ``(epoch, history_row)`` after the epoch's state is saved.

    Returns a summary: best epoch, its val metrics, paths, training seconds (of the epochs run
    now) and ``resumed_after``, the epochs taken from the resume cache (0 when none).
    """
    class_names = check_task(task)
    p = (TrainSettings.for_task(params, task, arch) if not isinstance(params, TrainSettings)
         else params)
    for ds in (train, val):
        if list(ds.class_names) != list(class_names):
            raise InputError(f"{ds.name}: classes {ds.class_names} do not match task {task} "
                             f"({list(class_names)})")
    missing = [class_names[c] for c in range(len(class_names)) if c not in set(val.labels.tolist())]
    if missing:
        raise InputError(f"{val.name}: no {missing} image(s) in the validation split; model "
                         "selection and calibration need every class (raise data.val_fraction)")
    h, w = train.image_size
    if val.image_size != (h, w):
        raise InputError(f"train images are {h}x{w} but val images {val.image_size}; rerun prepare")
    input_size = p.input_size or h
    check_input_size(arch, input_size)
    if len(train) < p.batch_size:
        raise InputError(f"{train.name}: {len(train)} images, fewer than train.batch_size "
                         f"({p.batch_size})")
    dev = resolve_device(device)
    precision = resolve_precision(p.precision, dev)
    weights = str(init)
    init_meta = None
    if weights not in ("none", "imagenet"):
        init_meta = load_checkpoint(weights, kind="classifier")["meta"]
        if init_meta.get("arch") != arch:
            raise InputError(
                f"{weights}: checkpoint of architecture {init_meta.get('arch')!r} cannot "
                f"initialise {arch!r}; use the {arch} checkpoint (models/binary/{arch}/best.pt)")
    normalization = (dict(init_meta["normalization"]) if init_meta and "normalization" in init_meta
                     else default_normalization(1))
    if init_meta is None and p.equalize:
        normalization["equalize"] = True
    elif bool(normalization.get("equalize", False)) != p.equalize:
        raise InputError(
            f"{weights}: checkpoint trained with equalize "
            f"{bool(normalization.get('equalize', False))} but train.equalize is {p.equalize}; "
            f"set the same value for both tasks (or retrain the start checkpoint)")
    recipe = p.as_dict()
    key_parts = {
        "task": task, "arch": arch, "seed": seed, "params": recipe, "device": dev.type,
        "precision": precision, "threads": torch.get_num_threads(),
        "data": _fingerprint(train, val),
        "init": file_sha256(weights) if init_meta is not None else weights,
        "versions": library_versions(),
        # the training code itself: an edit never resumes a run that older code started
        "code": code_fingerprint(module_closure(__name__)),
    }
    cache = ResumeCache(f"train/{task}/{arch}", params_key(key_parts), root=resume_root)

    set_determinism(seed)
    model = create_model(arch, len(class_names), in_chans=1, weights=weights,
                         cosine_head=p.cosine_head).to(dev)
    if p.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(
        p.loss, train.class_counts(), focal_alpha=p.focal_alpha, focal_gamma=p.focal_gamma,
        class_weighting=p.class_weights, label_smoothing=p.label_smoothing).to(dev)
    steps = len(train) // p.batch_size
    optimizer = make_optimizer(model, p)
    scheduler, when = make_scheduler(optimizer, p, steps)
    generator = torch.Generator().manual_seed(seed)
    augment = Augment.from_params(p.augment)
    sample_weights = balanced_sample_weights(train.labels) if p.balanced_sampler else None
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
    averaged = make_averaged(model, p.ema)
    evaluated = averaged.module if averaged is not None else model

    parts = Trainable(model, optimizer, generator, scheduler, scaler, averaged)
    log.info("training %s/%s: %d train / %d val images, %dx%d px, %s, %s, resume cache %s",
             task, arch, len(train), len(val), input_size, input_size, precision, weights,
             cache.dir)
    low_side, low_epochs = progressive_schedule(input_size, p, arch)
    if low_epochs:
        log.info("progressive resolution: epochs 1-%d train at %dx%d px, the rest at %dx%d px "
                 "(validation always at %d px)", low_epochs, low_side, low_side, input_size,
                 input_size, input_size)
    speed: dict[int, float] = {}

    def run_epoch(epoch: int) -> tuple[dict[str, float], tuple[float, ...], dict[str, float]]:
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(
            model, train, criterion, optimizer, normalization=normalization,
            batch_size=p.batch_size, generator=generator, augment=augment,
            input_size=low_side if epoch <= low_epochs else input_size,
            scheduler=scheduler if when == "batch" else None, sample_weights=sample_weights,
            precision=precision, channels_last=p.channels_last, progress=progress, scaler=scaler,
            averaged=averaged, mixup=p.mixup)
        if when == "epoch":
            scheduler.step()
        logits = predict_logits(evaluated, val, normalization=normalization,
                                batch_size=p.eval_batch_size, input_size=input_size,
                                precision=precision, channels_last=p.channels_last)
        vm = val_metrics(logits, val.labels, criterion)
        speed[epoch] = tr["images_per_s"]
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "val_loss": vm["loss"], "val_accuracy": vm["accuracy"], "val_auroc": vm["auroc"],
               "lr": lr}
        return row, _selection_score(p.select, vm), vm

    def log_epoch(epoch: int, row: dict[str, float], best: bool, took: float) -> None:
        log.info("%s/%s epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f auroc "
                 "%.4f | lr %.2e | %.0f s, %.1f img/s%s", task, arch, epoch, p.epochs,
                 row["train_loss"], row["train_accuracy"], row["val_loss"],
                 row["val_accuracy"], row["val_auroc"], row["lr"], took, speed[epoch],
                 " *" if best else "")

    res = run_epochs(parts, epochs=p.epochs, run_epoch=run_epoch, cache=cache, resume=resume,
                     key=key_parts, label=f"{task}/{arch}", log_epoch=log_epoch,
                     on_epoch_end=on_epoch_end)
    history, best = res.history, {"epoch": res.best_epoch, "metrics": res.best_info}
    seconds = res.seconds
    model = evaluated
    model.load_state_dict(res.best_state)
    if val_predictions_path is not None:
        logits = predict_logits(model, val, normalization=normalization,
                                batch_size=p.eval_batch_size, input_size=input_size,
                                precision=precision, channels_last=p.channels_last)
        write_predictions(val_predictions_path, logits, val)
    meta = {
        "arch": arch, "task": task, "class_names": list(class_names), "in_chans": 1,
        "input_size": int(input_size), "normalization": normalization,
        "cosine_head": p.cosine_head,
        "normalization_note": "x = (uint8 / 255 - mean) / std, applied outside the model",
        "best_epoch": best["epoch"], "val": best["metrics"], "select": p.select,
        "params": recipe, "seed": seed, "precision": precision, "channels_last": p.channels_last,
        "threads": torch.get_num_threads(), "device": dev.type,
        "init": weights, "init_sha256": key_parts["init"] if init_meta is not None else None,
        "versions": library_versions(), "data_source": data_source,
        "data_fingerprint": key_parts["data"], "n_train": len(train), "n_val": len(val),
        "preprocess": dict(preprocess) if preprocess else None,
    }
    save_checkpoint(model_path, cpu_state(model), meta, kind="classifier")
    write_history(history, history_path)
    log.info("%s/%s: best epoch %d (val %s) -> %s", task, arch, best["epoch"],
             {k: round(v, 4) for k, v in best["metrics"].items()}, model_path)
    return {"best_epoch": best["epoch"], "val": best["metrics"], "model_path": str(model_path),
            "history_path": str(history_path), "resume_dir": str(cache.dir),
            "seconds": seconds, "resumed_after": res.resumed_after}


def run_training(
    processed_dir: str | Path,
    outputs: Mapping[str, str | Path],
    *,
    task: str,
    arch: str,
    train_params: TrainSettings | Mapping[str, Any] | None,
    seed: int = 0,
    device: str = "auto",
    init: str | Path = "none",
    resume_root: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The ``train`` stage: ``train`` + ``val`` splits of the prepared data -> ``outputs``
    ``model`` (best.pt), ``history`` (CSV) and ``val_predictions`` (CSV, for ``calibrate``).

    ``train_params`` is the ``train`` section, or the part the stage was given: the recipe
    keys, ``train.<task>`` and ``train.per_arch.<arch>`` (the overrides are merged here).
    ``init`` is where the weights start: ``train.weights`` for the binary model, the binary
    ``best.pt`` for the three-class one.
    """
    p = TrainSettings.for_task(train_params, task, arch)
    train, source = load_task_split(processed_dir, "train", task)
    val, _ = load_task_split(processed_dir, "val", task)
    return fit(train, val, arch=arch, task=task, params=p, model_path=outputs["model"],
               history_path=outputs["history"],
               val_predictions_path=outputs.get("val_predictions"), seed=seed, device=device,
               init=init, data_source=source, resume_root=resume_root, progress=progress,
               preprocess=preprocess_meta(processed_dir, "plain"))


def subsample_by_patient(ds: ArrayDataset, n: int, seed: int = 0) -> ArrayDataset:
    """About ``n`` images of ``ds`` taken as whole patients in a seeded random order."""
    if ds.patients is None:
        raise InputError(f"{ds.name}: no patient ids to subsample by")
    rng = np.random.default_rng(seed)
    uniq = np.unique(ds.patients)
    keep = np.zeros(len(ds), dtype=bool)
    for pat in rng.permutation(uniq):
        if keep.sum() >= n:
            break
        keep |= ds.patients == pat
    idx = np.flatnonzero(keep)
    meta = None if ds.meta is None else ds.meta.iloc[idx].reset_index(drop=True)
    return ArrayDataset(ds.images[idx], ds.labels[idx], ds.class_names, ds.patients[idx],
                        name=f"{ds.name} [{len(idx)} of {len(ds)}]", meta=meta)
