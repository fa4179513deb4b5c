"""Training the anomaly detector's autoencoder on normal images (the ``train_autoencoder`` stage).

The study's recipe: the mean squared error of the reconstruction (plus a KL term for the
variational variant), Adam, NORMAL training images only (CLAHE by default); the best epoch has
the lowest reconstruction error on the normal val images. The epochs run in the shared
resumable loop (:func:`pneumocxr.fitloop.run_epochs`) and the model is saved in the shared
checkpoint format; nothing here knows the anomaly scores.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import __version__
from ..checkpoint import ResumeCache, params_key, save_checkpoint
from ..codedeps import code_fingerprint, module_closure
from ..data.arrays import SplitData, load_split, preprocess_meta
from ..errors import InputError
from ..fitloop import Trainable, run_epochs
from ..models import ConvAutoencoder, autoencoder_input
from ..settings import (AcquisitionJitter, AutoencoderSettings, AutoencoderTrainSettings,
                        anomaly_sections)
from ..utils import resolve_device, set_determinism

log = logging.getLogger(__name__)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample: -0.5 * sum(1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def acquisition_jitter(x: torch.Tensor, jitter: AcquisitionJitter,
                       generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (B, 1, H, W) in [0, 1] under its own acquisition: contrast around
    its mean, gamma, zoom and aspect (one affine resampling, border pixels repeated), Gaussian
    noise. Every draw comes from ``generator`` (its state is in the resume state)."""
    n = len(x)
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64) * 2 - 1
    if jitter.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        c = (1 + jitter.contrast * u[:, 0]).float().view(n, 1, 1, 1)
        x = (x - mean) * c + mean
    if jitter.gamma > 0:
        g = torch.exp(math.log1p(jitter.gamma) * u[:, 1]).float().view(n, 1, 1, 1)
        x = x.clamp(0, 1) ** g
    if jitter.zoom > 0 or jitter.aspect > 0:
        z = 1 + jitter.zoom * u[:, 2]
        a = 1 + jitter.aspect * u[:, 3]
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 1, 1] = 1 / (z * a), 1 / (z / a)
        grid = F.affine_grid(theta.float(), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if jitter.noise > 0:
        sigma = (jitter.noise * (u[:, 4] + 1) / 2).float().view(n, 1, 1, 1)
        x = x + sigma * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


def train_one_epoch(model: ConvAutoencoder, x: torch.Tensor, optimizer: torch.optim.Optimizer,
                    batch_size: int, generator: torch.Generator, kl_weight: float = 0.0,
                    jitter: AcquisitionJitter | None = None) -> float:
    """One pass over ``x`` in shuffled mini-batches; returns the mean training loss.

    Loss: mean squared error per pixel, plus ``kl_weight`` * KL / pixels for a VAE. With an
    active ``jitter`` each batch is first drawn under other acquisitions
    (:func:`acquisition_jitter`) and the model reconstructs what it is shown.
    """
    model.train()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for idx in _batches(len(x), batch_size, generator):
        if len(idx) < 2:  # BatchNorm needs two samples; the remainder is dropped this epoch
            continue
        xb = x[idx]
        if jitter is not None and jitter.active:
            xb = acquisition_jitter(xb, jitter, generator)
        xb = xb.to(device)
        mu, logvar = model.encode(xb)
        z = mu
        if model.variational:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = model.decode(z)
        loss = F.mse_loss(recon, xb)
        if model.variational and kl_weight > 0:
            loss = loss + kl_weight * kl_divergence(mu, logvar).mean() / xb[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def reconstruct(model: ConvAutoencoder, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Reconstructions of ``x`` in evaluation mode (CPU tensor)."""
    model.eval()
    device = next(model.parameters()).device
    out = [model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty_like(x)


@torch.no_grad()
def evaluate_loss(model: ConvAutoencoder, x: torch.Tensor, batch_size: int = 64) -> float:
    """Mean squared reconstruction error over ``x`` (evaluation mode)."""
    if len(x) == 0:
        return float("nan")
    return float(F.mse_loss(reconstruct(model, x, batch_size), x))


def fit_autoencoder(
    model: ConvAutoencoder,
    train_x: torch.Tensor,
    val_x: torch.Tensor | None = None,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    kl_weight: float = 1.0,
    jitter: AcquisitionJitter | None = None,
    seed: int = 0,
    cache: ResumeCache | None = None,
    key: Mapping[str, Any] | None = None,
    progress: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` to reconstruct ``train_x`` (normal images) with the MSE loss (Adam).

    The best epoch is the one with the lowest reconstruction error on ``val_x`` (validation
    *normal* images; the training loss when ``val_x`` is None). After every epoch the full
    state (weights, optimizer, shuffling generator, RNGs, history, best weights) is written to
    ``cache`` by the shared loop (:func:`pneumocxr.fitloop.run_epochs`); a rerun with the same
    cache resumes after the last finished epoch and ends bitwise-identical to an uninterrupted
    run.

    Returns ``{"history": [...], "best_state": state_dict, "best_epoch": int, "best_loss": float,
    "seconds": float}`` and leaves ``model`` holding the last epoch's weights.
    """
    if len(train_x) < 2:
        raise InputError(f"autoencoder training needs at least 2 normal images, got "
                         f"{len(train_x)}")
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)

    def run_epoch(epoch: int) -> tuple[dict[str, float], tuple[float], float]:
        train_loss = train_one_epoch(model, train_x, optimizer, batch_size, generator, kl_weight,
                                     jitter)
        val_loss = evaluate_loss(model, val_x) if val_x is not None and len(val_x) else train_loss
        return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}, (-val_loss,), \
            val_loss

    bar = tqdm(total=epochs, desc="autoencoder", unit="epoch", disable=not progress)

    def log_epoch(epoch: int, row: dict[str, float], best: bool, took: float) -> None:
        bar.update(epoch - bar.n)
        log.info("epoch %d/%d train_mse=%.6f val_mse=%.6f (%.1f s)%s", epoch, epochs,
                 row["train_loss"], row["val_loss"], took, " *" if best else "")

    res = run_epochs(Trainable(model, optimizer, generator), epochs=epochs, run_epoch=run_epoch,
                     cache=cache, key=key, label="autoencoder training", log_epoch=log_epoch,
                     on_epoch_end=on_epoch_end)
    bar.close()
    return {"history": res.history, "best_state": res.best_state,
            "best_epoch": res.best_epoch, "best_loss": res.best_info, "seconds": res.seconds}


# --------------------------------------------------------------------------------------------
# Anomaly scores
# --------------------------------------------------------------------------------------------


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    import platform

    return {"pneumocxr": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__}


def _normal_images(split: SplitData) -> np.ndarray:
    return np.asarray(split.images[split.y_binary == 0])


def write_history(history: Sequence[Mapping[str, float]], best_epoch: int,
                  path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(list(history), columns=["epoch", "train_loss", "val_loss"])
    df["best"] = df["epoch"] == best_epoch
    df.to_csv(path, index=False, float_format="%.6g")
    return path


def run_autoencoder_training(
    processed_dir: str | Path,
    model_path: str | Path,
    history_path: str | Path,
    *,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    resume_root: str | Path | None = None,
    progress: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """The ``train_autoencoder`` stage: normal ``train`` images in, ``best.pt`` + history out.

    Trains on the NORMAL images of the ``train`` split (variant ``anomaly.train.variant``, the
    study's CLAHE by default); the best epoch has the lowest reconstruction error on the normal
    ``val`` images. Resumes from ``ResumeCache("anomaly/autoencoder", key)`` where ``key``
    hashes the params, seed, data, device, thread count and library versions.
    """
    params = anomaly_sections(params)
    m = AutoencoderSettings.from_params(params.get("model"))
    t = AutoencoderTrainSettings.from_params(params.get("train"))
    train = load_split(processed_dir, "train", t.variant)
    val = load_split(processed_dir, "val", t.variant)
    normals, val_normals = _normal_images(train), _normal_images(val)
    if len(normals) < 2:
        raise InputError(f"{processed_dir}: the train split has {len(normals)} normal images; "
                         "the autoencoder learns from normal images only (at least 2 needed)")
    if len(val_normals) == 0:
        log.warning("no normal images in the val split: selecting the epoch on training loss")
    dev = resolve_device(device)
    key_parts = {"model": m.as_dict(), "train": t.as_dict(), "seed": seed, "device": dev.type, "threads": torch.get_num_threads(),
                 "data": _fingerprint(normals, val_normals), "versions": library_versions(),
                 "code": code_fingerprint(module_closure(__name__))}
    cache = ResumeCache("anomaly/autoencoder", params_key(key_parts), root=resume_root)
    set_determinism(seed)
    model = ConvAutoencoder(m.input_size, list(m.channels), m.latent_dim,
                            variational=m.variational).to(dev)
    x = autoencoder_input(normals, m.input_size)
    xv = autoencoder_input(val_normals, m.input_size) if len(val_normals) else None
    log.info("autoencoder: %d normal train / %d normal val images (%s), %dx%d px, channels %s, "
             "latent %d%s, resume cache %s", len(x), len(val_normals), t.variant,
             m.input_size, m.input_size, list(m.channels), m.latent_dim,
             " (VAE)" if m.variational else "", cache.dir)
    res = fit_autoencoder(model, x, xv, epochs=t.epochs, batch_size=t.batch_size,
                          lr=t.lr, weight_decay=t.weight_decay, kl_weight=t.kl_weight,
                          jitter=t.augment,
                          seed=seed, cache=cache, key=key_parts, progress=progress,
                          on_epoch_end=on_epoch_end)
    meta = {
        "kind": "autoencoder", "model": model.config(), "variant": t.variant,
        "train": key_parts["train"], "seed": seed, "device": dev.type,
        "threads": torch.get_num_threads(), "best_epoch": res["best_epoch"],
        "val_mse": res["best_loss"], "n_train_normal": len(x), "n_val_normal": len(val_normals),
        "data_source": train.data_source, "data_fingerprint": key_parts["data"],
        "image_size": list(train.images.shape[1:]), "versions": library_versions(),
        "normalization_note": "x = uint8 / 255, area-resized to model.input_size",
        "preprocess": preprocess_meta(processed_dir, t.variant),
    }
    save_checkpoint(model_path, res["best_state"], meta, kind="autoencoder")
    write_history(res["history"], res["best_epoch"], history_path)
    log.info("autoencoder: best epoch %d (val normal MSE %.6f) -> %s", res["best_epoch"],
             res["best_loss"], model_path)
    return {"best_epoch": res["best_epoch"], "val_mse": res["best_loss"],
            "model_path": str(model_path), "history_path": str(history_path),
            "resume_dir": str(cache.dir),
            "seconds": res["seconds"]}
