"""Anomaly detection: an autoencoder learns normal chest X-rays; a score flags the rest.

The study's detector (its Figures 10-11): a convolutional autoencoder trained with the mean
squared error on NORMAL training images only (CLAHE-preprocessed), an anomaly score per image,
and a threshold chosen on the validation split where the false positive and false negative
rates are equal (EER), then applied to the test split.

Why the score is a *structural* error of the worst pixels (measured on the shared Kermany copy;
``bench/anomaly_experiments.py``, numbers in ``bench/results/anomaly_experiments.json``):
pneumonia X-rays are hazier than normal ones -- opacities wash out ribs, vessels and the
diaphragm edge -- so they hold *less* fine structure, and fine structure is what a small
autoencoder fails to reconstruct. Errors that count lost detail therefore rank normals as the
anomalies: the gradient-map error gives test AUROC 0.19, and the mean squared error is weak
(0.58 after 15 epochs, 0.72 after 30). The default score is instead ``ssim`` aggregated by
``topk`` over the worst 2% of pixels: SSIM compares local structure (correlation) and contrast
*normalised by the local variance*, so the blurred but aligned reconstruction of a normal rib
cage costs little, while a region the normal-only model cannot produce -- it paints normal
lung over a consolidation -- is structurally wrong; the top-2% mean keeps a focal opacity from
being averaged away over the image. It flags what the autoencoder learned to be normal, with
no sign chosen on labels: with untrained weights the same score ranks backwards (test AUROC
0.19: against a structureless output it just counts structure, like the pixel errors), and it
improves as the autoencoder learns normal anatomy (0.84 after 15 epochs, 0.88 after 30); its
worst pixels sit in the lung fields of pneumonia images and at the image borders of normal
ones. It was chosen on the validation split (``bench/anomaly_experiments.py``,
``select_score``).

Densities fitted on the normal training images are offered too: ``feature_stats`` (Mahalanobis
distance of the per-channel mean and spread of the encoder's first-block responses) ranks as
well (test AUROC 0.89) but equally with *untrained* weights -- it measures global texture
(haze), not anything the autoencoder learned. ``latent_mahalanobis`` (a Gaussian over the
bottleneck codes) reaches 0.90 after 5-10 epochs but fades (0.76 at 30) as the code comes to
encode fine detail; ``patch_mahalanobis`` (per-position Gaussians, PaDiM-style) behaves alike.

Layout:

* :class:`ConvAutoencoder`, :func:`fit_autoencoder` (resumable, deterministic),
  :func:`train_one_epoch`.
* Scores (:data:`SCORES`, :func:`create_score`): pixel errors (``mse``, ``ssim``,
  ``gradient``, aggregated by ``mean`` / ``max`` / ``topk``), ``feature_error`` (error in the
  encoder's feature space) and densities fitted on the normal training images
  (``latent_mahalanobis``, ``latent_knn``, ``feature_stats``, ``patch_mahalanobis``).
* :func:`choose_threshold` (EER on validation), :func:`anomaly_metrics` (patient-bootstrap CIs).
* Stage entry points: :func:`run_autoencoder_training`, :func:`run_anomaly_evaluation`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from .errors import InputError, MissingInputError
from . import __version__
from .checkpoint import (ResumeCache, atomic_save, load_checkpoint, params_key, rng_state,
                         save_checkpoint, set_rng_state)
from .codedeps import code_fingerprint, module_closure
from .data.arrays import SplitData, load_split, preprocess_meta
from .metrics import binary_rates, bootstrap_cis, eer_threshold, reweight_to_prevalence
from .settings import (AnomalyEvaluateSettings, AutoencoderSettings,
                       AutoencoderTrainSettings, ScoreSettings)
from .utils import resolve_device, set_determinism, write_json

log = logging.getLogger(__name__)

class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder (optionally variational) for 1-channel square images.

    Encoder: ``len(channels)`` blocks of Conv2d(4x4, stride 2) + BatchNorm + LeakyReLU, each
    halving the side, then a linear map to a ``latent_dim`` code. Decoder: the mirror image with
    ConvTranspose2d(4x4, stride 2) blocks, ending in a sigmoid (pixels in [0, 1]).

    Args:
        input_size: side of the (square) input; must be divisible by ``2 ** len(channels)``.
        channels: output channels of the encoder blocks (the depth is their number).
        latent_dim: size of the bottleneck code.
        in_chans: image channels (1 for X-rays).
        variational: encode a Gaussian (mean, log-variance) and sample from it while training
            (a VAE); at evaluation the mean is decoded.
    """

    def __init__(self, input_size: int = 128, channels: Sequence[int] = (16, 32, 64, 128),
                 latent_dim: int = 128, in_chans: int = 1, variational: bool = False):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels:
            raise InputError("anomaly.channels must list at least one encoder block")
        depth = len(channels)
        if input_size % (2 ** depth):
            raise InputError(
                f"anomaly.input_size={input_size} is not divisible by 2**depth={2 ** depth} "
                f"(depth = len(anomaly.channels) = {depth}); pick a multiple of {2 ** depth}"
            )
        self.input_size = int(input_size)
        self.channels = channels
        self.latent_dim = int(latent_dim)
        self.in_chans = int(in_chans)
        self.variational = bool(variational)
        self.bottom = input_size // 2 ** depth
        flat = channels[-1] * self.bottom ** 2

        enc: list[nn.Module] = []
        c_in = in_chans
        for c in channels:
            enc.append(nn.Sequential(
                nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True)))
            c_in = c
        self.encoder = nn.ModuleList(enc)
        self.to_latent = nn.Linear(flat, latent_dim * (2 if variational else 1))
        self.from_latent = nn.Linear(latent_dim, flat)
        dec: list[nn.Module] = []
        rev = channels[::-1]
        for c, c_out in zip(rev[:-1], rev[1:]):
            dec.append(nn.Sequential(
                nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)))
        dec.append(nn.ConvTranspose2d(rev[-1], in_chans, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(*dec)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (stored in checkpoints to rebuild the model)."""
        return {"input_size": self.input_size, "channels": list(self.channels),
                "latent_dim": self.latent_dim, "in_chans": self.in_chans,
                "variational": self.variational}

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every encoder block (shallow to deep)."""
        feats = []
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        return feats

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mean, log_variance)`` of the code; ``log_variance`` is None for a plain AE."""
        h = self.forward_features(x)[-1].flatten(1)
        z = self.to_latent(h)
        if self.variational:
            mu, logvar = z.chunk(2, dim=1)
            return mu, logvar.clamp(-10.0, 10.0)
        return z, None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(-1, self.channels[-1], self.bottom, self.bottom)
        return torch.sigmoid(self.decoder(F.relu(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` (a VAE samples its code while training)."""
        mu, logvar = self.encode(x)
        z = mu
        if self.variational and self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z)


def to_tensor(images: np.ndarray, input_size: int) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, input_size, input_size) in [0, 1] (area-resized)."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise InputError(f"expected grayscale images of shape (N, H, W), got {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0).unsqueeze(1)
    if x.shape[-1] != input_size or x.shape[-2] != input_size:
        if x.shape[-1] != x.shape[-2]:
            raise InputError(f"expected square images, got {tuple(x.shape[-2:])}")
        mode = "area" if x.shape[-1] > input_size else "bilinear"
        x = F.interpolate(x, size=(input_size, input_size), mode=mode,
                          **({} if mode == "area" else {"align_corners": False}))
    return x.clamp_(0.0, 1.0)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample: -0.5 * sum(1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def train_one_epoch(model: ConvAutoencoder, x: torch.Tensor, optimizer: torch.optim.Optimizer,
                    batch_size: int, generator: torch.Generator, kl_weight: float = 0.0,
                    ) -> float:
    """One pass over ``x`` in shuffled mini-batches; returns the mean training loss.

    Loss: mean squared error per pixel, plus ``kl_weight`` * KL / pixels for a VAE.
    """
    model.train()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for idx in _batches(len(x), batch_size, generator):
        if len(idx) < 2:  # BatchNorm needs two samples; the remainder is dropped this epoch
            continue
        xb = x[idx].to(device)
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
    seed: int = 0,
    cache: ResumeCache | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` to reconstruct ``train_x`` (normal images) with the MSE loss (Adam).

    The best epoch is the one with the lowest reconstruction error on ``val_x`` (validation
    *normal* images; the training loss when ``val_x`` is None). After every epoch the full
    state (weights, optimizer, shuffling generator, RNGs, history, best weights) is written to
    ``cache``; a rerun with the same cache resumes after the last finished epoch and ends
    bitwise-identical to an uninterrupted run.

    Returns ``{"history": [...], "best_state": state_dict, "best_epoch": int, "best_loss": float}``
    and leaves ``model`` holding the last epoch's weights.
    """
    if len(train_x) < 2:
        raise InputError(f"autoencoder training needs at least 2 normal images, got "
                         f"{len(train_x)}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    best = {"state": _cpu_state(model), "epoch": 0, "loss": math.inf}
    start = 0
    state = cache.load() if cache is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        history = state["history"]
        best = state["best"]
        start = state["epoch"] + 1
        log.info("resuming autoencoder training after epoch %d of %d (%s)", start, epochs,
                 cache.path)
    seconds = 0.0
    bar = tqdm(range(start, epochs), desc="autoencoder", unit="epoch", disable=not progress,
               initial=start, total=epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        train_loss = train_one_epoch(model, train_x, optimizer, batch_size, generator, kl_weight)
        val_loss = evaluate_loss(model, val_x) if val_x is not None and len(val_x) else train_loss
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss}
        seconds += time.perf_counter() - t0
        history.append(row)
        if val_loss < best["loss"]:
            best = {"state": _cpu_state(model), "epoch": epoch + 1, "loss": val_loss}
        bar.set_postfix(train=f"{train_loss:.5f}", val=f"{val_loss:.5f}")
        log.info("epoch %d/%d train_mse=%.6f val_mse=%.6f (%.1f s)", epoch + 1, epochs,
                 train_loss, val_loss, time.perf_counter() - t0)
        if cache is not None:
            cache.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "rng": rng_state(),
                        "history": history, "best": best, "epoch": epoch})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    return {"history": history, "best_state": best["state"], "best_epoch": best["epoch"],
            "best_loss": best["loss"], "seconds": seconds}


# --------------------------------------------------------------------------------------------
# Anomaly scores
# --------------------------------------------------------------------------------------------


def _blur_matrix(n: int, window: int, sigma: float) -> torch.Tensor:
    """(n, n) matrix ``B`` such that ``B @ v`` is ``v`` convolved with a normalised Gaussian of
    ``window`` taps, with reflect padding folded in (a blur as one matrix product, which is
    several times faster on CPU than a one-channel convolution)."""
    if n <= window // 2:
        raise InputError(f"SSIM window {window} is too large for images of side {n}")
    ax = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(ax ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    src = torch.arange(n)[:, None] + ax.long()[None, :]          # (n, window) source rows
    src = src.abs()                                              # reflect at the start
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)      # and at the end
    out = torch.zeros(n, n, dtype=torch.float64)
    out.scatter_add_(1, src, g.expand(n, window).contiguous())
    return out.float()


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
             data_range: float = 1.0) -> torch.Tensor:
    """Local structural similarity (Wang et al. 2004) of two (N, 1, H, W) batches, per pixel.

    Gaussian-weighted local means, variances and covariance (reflect padding, so the map has
    the size of the input); C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L the data range.
    """
    bh = _blur_matrix(x.shape[-2], window, sigma).to(x)
    bw = _blur_matrix(x.shape[-1], window, sigma).to(x).t()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return bh @ t @ bw

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx ** 2
    vy = blur(y * y) - my ** 2
    cxy = blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of a (N, 1, H, W) batch with 3x3 Sobel filters (replicate padding)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).to(x) / 8.0
    k = torch.stack([kx, kx.t()]).unsqueeze(1)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)
    return torch.sqrt((g ** 2).sum(1, keepdim=True) + 1e-12)


def aggregation_label(how: str, fraction: float) -> str:
    """``topk``, 0.02 -> 'mean of the worst 2%' (for figure labels)."""
    if how == "topk":
        return f"mean of the worst {100 * fraction:g}%"
    return f"image {how}"


def aggregate(maps: torch.Tensor, how: str = "mean", fraction: float = 0.01) -> torch.Tensor:
    """One number per map: ``mean`` of all locations, ``max``, or ``topk``: the mean of the
    largest ``fraction`` of locations (at least one)."""
    flat = maps.flatten(1)
    if how == "mean":
        return flat.mean(1)
    if how == "max":
        return flat.amax(1)
    if how == "topk":
        if not 0 < fraction <= 1:
            raise InputError(f"anomaly aggregation fraction must be in (0, 1], got {fraction}")
        k = max(1, int(round(fraction * flat.shape[1])))
        return flat.topk(k, dim=1).values.mean(1)
    raise InputError(f"unknown aggregation {how!r}; expected mean, max or topk")


@dataclass
class Forward:
    """What one pass of the autoencoder gives for a batch (the inputs of every score)."""

    x: torch.Tensor
    recon: torch.Tensor
    code: torch.Tensor
    feats: list[torch.Tensor]
    recon_feats: list[torch.Tensor] | None = None


@torch.no_grad()
def forward_batch(model: ConvAutoencoder, x: torch.Tensor, recon_feats: bool = False) -> Forward:
    """Evaluation-mode pass: encoder features, code (the mean for a VAE) and reconstruction."""
    model.eval()
    device = next(model.parameters()).device
    x = x.to(device)
    feats = model.forward_features(x)
    code = model.to_latent(feats[-1].flatten(1))
    if model.variational:
        code = code.chunk(2, dim=1)[0]
    recon = model.decode(code)
    rf = model.forward_features(recon) if recon_feats else None
    return Forward(x, recon, code, feats, rf)


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, Ledoit-Wolf shrunk covariance and shrinkage of samples ``x`` (..., N, C), batched
    over leading dimensions, in float64.

    The covariance is ``(1 - a) S + a (tr S / C) I`` with ``S`` the (biased) sample covariance
    and ``a`` the Ledoit-Wolf (2004) estimate of the optimal shrinkage (as scikit-learn's
    ``ledoit_wolf``), so it stays invertible with fewer samples than dimensions.
    """
    x = x.double()
    n, c = x.shape[-2], x.shape[-1]
    mean = x.mean(-2)
    xc = x - mean.unsqueeze(-2)
    emp = xc.transpose(-1, -2) @ xc / n
    x2 = xc ** 2
    trace = x2.sum(-2) / n                                     # diagonal of emp
    mu = trace.sum(-1) / c
    beta_ = (x2.transpose(-1, -2) @ x2).sum((-1, -2))
    delta_ = (emp ** 2).sum((-1, -2))
    beta = (beta_ / n - delta_) / (c * n)
    delta = (delta_ - 2.0 * mu * trace.sum(-1) + c * mu ** 2) / c
    beta = torch.minimum(beta, delta)
    shrink = torch.where(delta > 0, beta / delta.clamp_min(1e-300), torch.zeros_like(delta))
    eye = torch.eye(c, dtype=x.dtype)
    cov = (1 - shrink)[..., None, None] * emp + (shrink * mu)[..., None, None] * eye
    return mean, cov, shrink


class GaussianDensity:
    """A Gaussian fitted to feature vectors (Ledoit-Wolf shrunk covariance); scores are
    Mahalanobis distances to it. Batched: ``fit`` on (..., N, C) fits one Gaussian per
    leading index (e.g. one per image position)."""

    def __init__(self) -> None:
        self.mean: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None

    def fit(self, feats: torch.Tensor) -> "GaussianDensity":
        if feats.shape[-2] < 2:
            raise InputError("a Gaussian density needs at least two normal images to fit")
        mean, cov, _ = ledoit_wolf(feats.detach().cpu())
        self.mean = mean.float()
        # pseudo-inverse: a feature constant over all normal images (zero variance, nothing to
        # shrink towards) leaves the covariance singular; it then simply does not count
        self.precision = torch.linalg.pinv(cov, hermitian=True).float()
        return self

    def distance(self, feats: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of (..., N, C) features -> (..., N)."""
        if self.mean is None or self.precision is None:
            raise RuntimeError("GaussianDensity.distance called before fit")
        d = feats.detach().cpu().float() - self.mean.unsqueeze(-2)
        return ((d @ self.precision) * d).sum(-1).clamp_min(0.0).sqrt()

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "precision": self.precision}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.precision = state["mean"], state["precision"]


class AnomalyScore:
    """Base of the anomaly scores: higher = less like the normal training images.

    ``fit`` sees evaluation-mode passes (:class:`Forward`, an iterable consumed once) over the
    *normal training* images (scores that need no fit ignore them); ``map`` gives a
    per-location anomaly map when the score has one (for figures), else None; ``score`` gives
    one number per image.
    """

    name = "base"
    needs_fit = False
    needs_recon_feats = False

    @property
    def label(self) -> str:
        """Human-readable description (figure axes and titles)."""
        return self.name.replace("_", " ")

    @property
    def map_label(self) -> str:
        """What :meth:`map` shows (figure row label)."""
        return f"{self.label} map"

    def fit(self, forwards: Iterable[Forward]) -> "AnomalyScore":
        return self

    def map(self, fwd: Forward) -> torch.Tensor | None:
        return None

    def score(self, fwd: Forward) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ReconstructionError(AnomalyScore):
    """Pixel-space reconstruction error, aggregated over the image.

    ``kind``: ``mse`` squared error; ``ssim``: (1 - SSIM) / 2, structural dissimilarity;
    ``gradient``: absolute difference of Sobel gradient magnitudes (edges lost or invented).
    """

    def __init__(self, kind: str = "mse", aggregation: str = "mean", fraction: float = 0.01):
        if kind not in ("mse", "ssim", "gradient"):
            raise InputError(f"unknown reconstruction error {kind!r}; expected mse, ssim or "
                             "gradient")
        self.kind, self.aggregation, self.fraction = kind, aggregation, fraction
        self.name = kind

    @property
    def label(self) -> str:
        what = {"mse": "squared error", "ssim": "SSIM dissimilarity",
                "gradient": "gradient-map error"}[self.kind]
        return f"{what} ({aggregation_label(self.aggregation, self.fraction)})"

    @property
    def map_label(self) -> str:
        return {"mse": "(input - recon.)^2", "ssim": "(1 - SSIM) / 2",
                "gradient": "|grad input - grad recon.|"}[self.kind]

    def map(self, fwd: Forward) -> torch.Tensor:
        x, r = fwd.x, fwd.recon
        if self.kind == "mse":
            return (x - r) ** 2
        if self.kind == "ssim":
            return (1.0 - ssim_map(x, r)) / 2.0
        return (sobel_magnitude(x) - sobel_magnitude(r)).abs()

    def score(self, fwd: Forward) -> torch.Tensor:
        return aggregate(self.map(fwd), self.aggregation, self.fraction)


class FeatureError(AnomalyScore):
    """Reconstruction error in the encoder's own feature space (a 'perceptual' error).

    Per encoder level: channel-mean squared difference of the features of the input and of its
    reconstruction, divided by that level's mean squared feature over the normal training
    images (so every level weighs the same), upsampled to the input size and averaged.
    """

    name = "feature_error"
    needs_fit = True
    needs_recon_feats = True

    map_label = "encoder-feature error"

    @property
    def label(self) -> str:
        return f"encoder-feature error ({aggregation_label(self.aggregation, self.fraction)})"

    def __init__(self, aggregation: str = "mean", fraction: float = 0.01):
        self.aggregation, self.fraction = aggregation, fraction
        self.scale: torch.Tensor | None = None

    def fit(self, forwards: Iterable[Forward]) -> "FeatureError":
        sums = None
        n = 0
        for fwd in forwards:
            per = torch.stack([f.pow(2).mean((1, 2, 3)).sum() for f in fwd.feats])
            sums = per if sums is None else sums + per
            n += len(fwd.x)
        if sums is None or n == 0:
            raise InputError("feature_error needs normal images to fit its level scales")
        self.scale = (sums / n).cpu()
        return self

    def map(self, fwd: Forward) -> torch.Tensor:
        if self.scale is None or fwd.recon_feats is None:
            raise RuntimeError("feature_error: fit first and pass forwards with recon_feats")
        size = fwd.x.shape[-2:]
        maps = [F.interpolate((a - b).pow(2).mean(1, keepdim=True) / s, size=size,
                              mode="bilinear", align_corners=False)
                for a, b, s in zip(fwd.feats, fwd.recon_feats, self.scale.to(fwd.x))]
        return torch.stack(maps).mean(0)

    def score(self, fwd: Forward) -> torch.Tensor:
        return aggregate(self.map(fwd), self.aggregation, self.fraction)

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = state["scale"]


class LatentDensity(AnomalyScore):
    """Distance of the bottleneck code from the codes of the normal training images.

    ``kind``: ``mahalanobis`` to a Gaussian fitted to them (Ledoit-Wolf covariance) or ``knn``:
    mean Euclidean distance to the ``k`` nearest of them.
    """

    needs_fit = True

    def __init__(self, kind: str = "mahalanobis", k: int = 5):
        if kind not in ("mahalanobis", "knn"):
            raise InputError(f"unknown latent density {kind!r}; expected mahalanobis or knn")
        self.kind, self.k = kind, int(k)
        self.name = f"latent_{kind}"
        self._label = ("Mahalanobis distance of the code to normal codes" if kind == "mahalanobis"
                       else f"mean distance to the {self.k} nearest normal codes")
        self.gaussian = GaussianDensity()
        self.bank: torch.Tensor | None = None

    @property
    def label(self) -> str:
        return self._label

    def fit(self, forwards: Iterable[Forward]) -> "LatentDensity":
        codes = torch.cat([f.code.cpu() for f in forwards])
        if self.kind == "mahalanobis":
            self.gaussian.fit(codes)
        else:
            if len(codes) < self.k:
                raise InputError(f"latent_knn: k={self.k} exceeds the {len(codes)} normal images")
            self.bank = codes.float()
        return self

    def score(self, fwd: Forward) -> torch.Tensor:
        if self.kind == "mahalanobis":
            return self.gaussian.distance(fwd.code)
        if self.bank is None:
            raise RuntimeError("latent_knn: fit before scoring")
        d = torch.cdist(fwd.code.cpu().float(), self.bank)
        return d.topk(self.k, dim=1, largest=False).values.mean(1)

    def state_dict(self) -> dict[str, Any]:
        return {"gaussian": self.gaussian.state_dict(), "bank": self.bank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gaussian.load_state_dict(state["gaussian"])
        self.bank = state["bank"]


def feature_statistics(feats: Sequence[torch.Tensor], levels: Sequence[int]) -> torch.Tensor:
    """Per-channel spatial mean and standard deviation of the chosen encoder levels."""
    parts = []
    for i in levels:
        f = feats[i].flatten(2)
        parts += [f.mean(2), f.std(2)]
    return torch.cat(parts, dim=1)


class FeatureStatsDensity(AnomalyScore):
    """Mahalanobis distance of the encoder's texture statistics (per-channel mean and standard
    deviation of the chosen levels) from those of the normal training images."""

    name = "feature_stats"
    needs_fit = True
    label = "Mahalanobis distance of encoder texture statistics"

    def __init__(self, levels: Sequence[int] | None = None):
        self.levels = None if levels is None else [int(i) for i in levels]
        self.gaussian = GaussianDensity()

    def _levels(self, fwd: Forward) -> list[int]:
        return list(range(len(fwd.feats))) if self.levels is None else self.levels

    def fit(self, forwards: Iterable[Forward]) -> "FeatureStatsDensity":
        self.gaussian.fit(torch.cat([feature_statistics(f.feats, self._levels(f)).cpu()
                                     for f in forwards]))
        return self

    def score(self, fwd: Forward) -> torch.Tensor:
        return self.gaussian.distance(feature_statistics(fwd.feats, self._levels(fwd)))

    def state_dict(self) -> dict[str, Any]:
        return {"gaussian": self.gaussian.state_dict(), "levels": self.levels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gaussian.load_state_dict(state["gaussian"])
        self.levels = state["levels"]


class PatchDensity(AnomalyScore):
    """Per-position Gaussians over the encoder features of one level (normal images are
    roughly aligned, so each position has its own model of what normal looks like there);
    the map is the Mahalanobis distance at every position, aggregated over the image."""

    name = "patch_mahalanobis"
    needs_fit = True
    map_label = "per-position Mahalanobis distance"

    @property
    def label(self) -> str:
        return (f"per-position Mahalanobis distance "
                f"({aggregation_label(self.aggregation, self.fraction)})")

    def __init__(self, level: int = -2, aggregation: str = "mean", fraction: float = 0.1):
        self.level, self.aggregation, self.fraction = int(level), aggregation, fraction
        self.gaussian = GaussianDensity()
        self.shape: tuple[int, ...] | None = None

    def fit(self, forwards: Iterable[Forward]) -> "PatchDensity":
        f = torch.cat([fw.feats[self.level].cpu() for fw in forwards])  # (N, C, h, w)
        self.shape = tuple(f.shape[-2:])
        self.gaussian.fit(f.flatten(2).permute(2, 0, 1))                 # (P, N, C)
        return self

    def map(self, fwd: Forward) -> torch.Tensor:
        if self.shape is None:
            raise RuntimeError("patch_mahalanobis: fit before scoring")
        f = fwd.feats[self.level]
        n, _, h, w = f.shape
        if (h, w) != self.shape:
            raise InputError(f"patch_mahalanobis was fitted on {self.shape} feature maps, got "
                             f"{(h, w)}; score images of the training input size")
        d = self.gaussian.distance(f.flatten(2).permute(2, 0, 1))       # (P, N)
        return d.t().reshape(n, 1, h, w)

    def score(self, fwd: Forward) -> torch.Tensor:
        return aggregate(self.map(fwd), self.aggregation, self.fraction)

    def state_dict(self) -> dict[str, Any]:
        return {"gaussian": self.gaussian.state_dict(), "shape": self.shape, "level": self.level}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gaussian.load_state_dict(state["gaussian"])
        self.shape, self.level = state["shape"], state["level"]


#: Score registry: name -> factory taking the ``anomaly.score`` params.
SCORES: dict[str, Callable[..., AnomalyScore]] = {
    "mse": lambda aggregation="mean", fraction=0.01, **_: ReconstructionError(
        "mse", aggregation, fraction),
    "ssim": lambda aggregation="mean", fraction=0.01, **_: ReconstructionError(
        "ssim", aggregation, fraction),
    "gradient": lambda aggregation="mean", fraction=0.01, **_: ReconstructionError(
        "gradient", aggregation, fraction),
    "feature_error": lambda aggregation="mean", fraction=0.01, **_: FeatureError(
        aggregation, fraction),
    "latent_mahalanobis": lambda **_: LatentDensity("mahalanobis"),
    "latent_knn": lambda k=5, **_: LatentDensity("knn", k),
    "feature_stats": lambda levels=None, **_: FeatureStatsDensity(levels),
    "patch_mahalanobis": lambda level=-1, aggregation="mean", fraction=0.01, **_: PatchDensity(
        level, aggregation, fraction),
}


def create_score(method: str, **options: Any) -> AnomalyScore:
    """Build a score by name (see :data:`SCORES`); unused options are ignored, so the whole
    ``anomaly.score`` params section can be passed."""
    if method not in SCORES:
        raise InputError(f"unknown anomaly score {method!r}; anomaly.score.method must be one "
                         f"of {sorted(SCORES)}")
    if options.get("aggregation", "mean") not in ("mean", "max", "topk"):
        raise InputError(f"anomaly.score.aggregation must be mean, max or topk, got "
                         f"{options['aggregation']!r}")
    return SCORES[method](**options)


def iterate_forwards(model: ConvAutoencoder, x: torch.Tensor, batch_size: int = 64,
                     recon_feats: bool = False, progress: bool = False, desc: str = "score"):
    """Evaluation-mode :class:`Forward` passes over ``x`` in batches."""
    starts = range(0, len(x), batch_size)
    for i in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        yield forward_batch(model, x[i:i + batch_size], recon_feats=recon_feats)


def fit_score(scorer: AnomalyScore, model: ConvAutoencoder, normal_x: torch.Tensor,
              batch_size: int = 64, progress: bool = False) -> AnomalyScore:
    """Fit ``scorer`` on the normal training images (a no-op for pure reconstruction errors)."""
    if not scorer.needs_fit:
        return scorer
    if len(normal_x) < 2:
        raise InputError(f"score {scorer.name} needs at least 2 normal training images to fit")
    # streamed: each score keeps only what it needs of a batch (codes, statistics, one level)
    return scorer.fit(iterate_forwards(model, normal_x, batch_size, scorer.needs_recon_feats,
                                       progress, desc=f"fit {scorer.name}"))


def compute_scores(scorer: AnomalyScore, model: ConvAutoencoder, x: torch.Tensor,
                   batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Anomaly score of every image in ``x`` (higher = less like the normal training images)."""
    out = [scorer.score(fw).detach().cpu()
           for fw in iterate_forwards(model, x, batch_size, scorer.needs_recon_feats, progress)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


# --------------------------------------------------------------------------------------------
# Threshold and metrics
# --------------------------------------------------------------------------------------------


def choose_threshold(y_true: np.ndarray, score: np.ndarray, tolerance: float = 5e-3
                     ) -> dict[str, Any]:
    """Equal-error-rate threshold on validation scores (a score >= it flags pneumonia).

    Returns the threshold, the validation FPR and FNR at it, their gap, and whether the gap is
    within ``tolerance`` (the study's 5e-3; with few validation images the achievable gaps are
    multiples of 1/n, so it may be out of reach).
    """
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=float)
    if len(np.unique(y_true)) < 2:
        raise InputError("the EER threshold needs normal and pneumonia images in the validation "
                         "split; raise data.val_fraction")
    if not np.all(np.isfinite(score)):
        raise InputError("anomaly scores contain NaN or infinity; check the model checkpoint")
    t = eer_threshold(y_true, score)
    return {"value": t["threshold"], "rule": "eer", "val_fpr": t["fpr"], "val_fnr": t["fnr"],
            "gap": t["gap"], "tolerance": float(tolerance),
            "tolerance_met": bool(t["gap"] <= tolerance)}


def _statistics(threshold: float, prevalence: float):
    def stats(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
        r = binary_rates(y, (s >= threshold).astype(int))
        both = len(np.unique(y)) == 2
        rw = reweight_to_prevalence(r["sensitivity"], r["specificity"], prevalence)
        return {
            "error_rate": r["error_rate"], "accuracy": r["accuracy"],
            "precision": r["precision"], "sensitivity": r["sensitivity"],
            "specificity": r["specificity"], "f1": r["f1"],
            "auroc": float(roc_auc_score(y, s)) if both else float("nan"),
            "auprc": float(average_precision_score(y, s)) if both else float("nan"),
            "precision_at_reference_prevalence": rw["precision"],
            "f1_at_reference_prevalence": rw["f1"],
        }
    return stats


def anomaly_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float,
                 patients: np.ndarray | None = None, *, prevalence: float = 0.625,
                 n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metrics at ``threshold`` with 95% percentile-bootstrap CIs resampling patients.

    Error rate, accuracy, precision, sensitivity, specificity, F1, AUROC, AUPRC, and precision
    and F1 re-weighted to ``prevalence`` (what the same sensitivity and specificity give where
    that share of images is pneumonia; 0.625 is the official Kermany test set).
    """
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=float)
    cis = bootstrap_cis(_statistics(threshold, prevalence), [y_true, score], groups=patients,
                        n_boot=n_boot, seed=seed)
    counts = binary_rates(y_true, (score >= threshold).astype(int))
    return {"n": int(len(y_true)), "n_patients": int(len(np.unique(patients)))
            if patients is not None else int(len(y_true)),
            "prevalence": float(y_true.mean()) if len(y_true) else float("nan"),
            "reference_prevalence": float(prevalence),
            **cis, **{k: counts[k] for k in ("tp", "fp", "tn", "fn")}}


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


ANOMALY_SECTIONS = ("model", "train", "score", "evaluate")


def _sections(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``anomaly`` params given to a stage (each stage reads its own sections of them);
    any other name is a typo, refused."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(ANOMALY_SECTIONS))
    if unknown:
        raise InputError(f"anomaly.{unknown[0]}: unknown section; allowed: "
                         f"{', '.join(ANOMALY_SECTIONS)}")
    return params


def _check_levels(score: ScoreSettings, depth: int) -> None:
    """The score's encoder blocks must exist in the trained model (``depth`` blocks)."""
    for lv in [score.level, *(score.levels or [])]:
        if not -depth <= lv < depth:
            raise InputError(f"anomaly.score: encoder block {lv} does not exist; the autoencoder "
                             f"has {depth} blocks (use 0..{depth - 1}, or -1 for the deepest)")


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


def build_model(meta: Mapping[str, Any]) -> ConvAutoencoder:
    """The autoencoder described by a checkpoint's ``meta["model"]``."""
    cfg = meta["model"]
    return ConvAutoencoder(cfg["input_size"], cfg["channels"], cfg["latent_dim"],
                           cfg.get("in_chans", 1), cfg.get("variational", False))


def load_autoencoder(path: str | Path, device: str = "cpu") -> tuple[ConvAutoencoder, dict]:
    """Load a ``best.pt`` of :func:`run_autoencoder_training` -> (model in eval mode, meta)."""
    ckpt = load_checkpoint(path, kind="autoencoder")
    meta = ckpt["meta"]
    model = build_model(meta)
    model.load_state_dict(ckpt["model"])
    return model.to(resolve_device(device)).eval(), meta


@dataclass
class Detector:
    """A trained autoencoder with its fitted score and the val threshold (what
    ``evaluate_anomaly`` saved): everything needed to flag new images the same way."""

    model: ConvAutoencoder
    meta: dict[str, Any]
    scorer: AnomalyScore
    threshold: float
    score_params: dict[str, Any]


def load_detector(model_path: str | Path, state_path: str | Path, device: str = "cpu"
                  ) -> Detector:
    """The autoencoder ``model_path`` and the ``score_state.pt`` of its evaluation."""
    model, meta = load_autoencoder(model_path, device)
    state_path = Path(state_path)
    if not state_path.is_file():
        raise MissingInputError(f"{state_path}: not found; the evaluate_anomaly stage writes "
                                "the fitted score and its threshold")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    scorer = create_score(**state["score"])
    if scorer.needs_fit:
        scorer.load_state_dict(state["state"])
    return Detector(model, meta, scorer, float(state["threshold"]["value"]), dict(state["score"]))


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
    params = _sections(params)
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
    x = to_tensor(normals, m.input_size)
    xv = to_tensor(val_normals, m.input_size) if len(val_normals) else None
    log.info("autoencoder: %d normal train / %d normal val images (%s), %dx%d px, channels %s, "
             "latent %d%s, resume cache %s", len(x), len(val_normals), t.variant,
             m.input_size, m.input_size, list(m.channels), m.latent_dim,
             " (VAE)" if m.variational else "", cache.dir)
    res = fit_autoencoder(model, x, xv, epochs=t.epochs, batch_size=t.batch_size,
                          lr=t.lr, weight_decay=t.weight_decay, kl_weight=t.kl_weight,
                          seed=seed, cache=cache, progress=progress, on_epoch_end=on_epoch_end)
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


def pick_examples(y: np.ndarray, n_per_class: int, seed: int) -> np.ndarray:
    """Indices of up to ``n_per_class`` normal then pneumonia images (seeded, sorted)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        take = min(n_per_class, len(idx))
        out.append(np.sort(rng.choice(idx, size=take, replace=False)) if take else idx[:0])
    return np.concatenate(out).astype(int)


def run_anomaly_evaluation(
    model_path: str | Path,
    processed_dir: str | Path,
    outputs: Mapping[str, str | Path],
    *,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """The ``evaluate_anomaly`` stage: score, threshold on val (EER), test metrics, figures.

    ``outputs`` keys: ``metrics`` (JSON), ``scores`` (CSV of val and test scores), and the
    figures ``reconstructions``, ``histogram``, ``roc`` (each optional except ``metrics``).
    The score (``anomaly.score``) is fitted on the normal ``train`` images; the threshold is
    chosen on ``val`` (normal + pneumonia) and never looks at ``test``.
    """
    from .plots import anomaly as plots
    from .plots.common import save

    params = _sections(params)
    s = ScoreSettings.from_params(params.get("score"))
    e = AnomalyEvaluateSettings.from_params(params.get("evaluate"))
    model, meta = load_autoencoder(model_path, device)
    _check_levels(s, len(meta["model"]["channels"]))
    variant, size = meta["variant"], meta["model"]["input_size"]
    splits = {name: load_split(processed_dir, name, variant) for name in ("train", "val", "test")}
    data_source = splits["test"].data_source
    scorer = create_score(**s.as_dict())
    set_determinism(seed)
    fit_score(scorer, model, to_tensor(_normal_images(splits["train"]), size), e.batch_size,
              progress)
    scores, xs = {}, {}
    for name in ("val", "test"):
        xs[name] = to_tensor(splits[name].images, size)
        scores[name] = compute_scores(scorer, model, xs[name], e.batch_size, progress)
    y_val, y_test = splits["val"].y_binary, splits["test"].y_binary
    threshold = choose_threshold(y_val, scores["val"], e.eer_tolerance)
    if outputs.get("score_state"):
        # what `pneumocxr predict` needs to score new images the same way: the score's params,
        # its state fitted on the normal training images (empty for reconstruction errors)
        # and the threshold
        atomic_save({"score": s.as_dict(), "state": scorer.state_dict(), "threshold": threshold},
                    outputs["score_state"])
    test = anomaly_metrics(y_test, scores["test"], threshold["value"], splits["test"].patients,
                           prevalence=e.prevalence, n_boot=e.n_boot, seed=seed)
    pred_test = scores["test"] >= threshold["value"]
    sub = splits["test"].meta["subtype"].to_numpy()
    by_subtype = {st: {"n": int((sub == st).sum()),
                       "flagged": float(pred_test[sub == st].mean())}
                  for st in sorted(set(sub))}
    val_auroc = float(roc_auc_score(y_val, scores["val"]))
    metrics = {
        "data_source": data_source, "score": {**s.as_dict(), "label": scorer.label}, "variant": variant,
        "model": {**meta["model"], "best_epoch": meta["best_epoch"],
                  "val_mse": meta["val_mse"], "n_train_normal": meta["n_train_normal"]},
        "threshold": threshold,
        "val": {"n": int(len(y_val)), "prevalence": float(y_val.mean()), "auroc": val_auroc},
        "test": test,
        "test_flagged_by_subtype": by_subtype,
        "note": "score >= threshold flags pneumonia; threshold chosen on val (EER), never on "
                "test; CIs: 95% percentile bootstrap over patients",
    }
    write_json(metrics, outputs["metrics"])
    log.info("anomaly (%s): threshold %.4g (val FPR %.3f FNR %.3f, gap %.4f, tolerance %s); "
             "test AUROC %.3f sensitivity %.3f specificity %.3f", scorer.name,
             threshold["value"], threshold["val_fpr"], threshold["val_fnr"], threshold["gap"],
             "met" if threshold["tolerance_met"] else "not met", test["auroc"]["value"],
             test["sensitivity"]["value"], test["specificity"]["value"])

    if outputs.get("scores"):
        rows = []
        for name in ("val", "test"):
            d = splits[name]
            rows.append(pd.DataFrame({
                "split": name, "index": np.arange(len(d)), "file": d.meta["file"],
                "patient": d.patients, "label": d.meta["label"], "subtype": d.meta["subtype"],
                "score": scores[name], "flagged": scores[name] >= threshold["value"]}))
        path = Path(outputs["scores"])
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.concat(rows).to_csv(path, index=False, float_format="%.6g")
    label = scorer.label
    if outputs.get("reconstructions"):
        idx = pick_examples(y_test, e.n_examples, seed)
        fw = forward_batch(model, xs["test"][idx], recon_feats=scorer.needs_recon_feats)
        amap = scorer.map(fw)  # None for scores of the whole image (latent densities)
        fig = plots.reconstruction_grid(
            fw.x.cpu().numpy()[:, 0], fw.recon.cpu().numpy()[:, 0], y_test[idx],
            scores["test"][idx], threshold["value"], data_source,
            anomaly_maps=None if amap is None else amap.cpu().numpy()[:, 0],
            map_label=scorer.map_label)
        save(fig, outputs["reconstructions"])
    if outputs.get("histogram"):
        save(plots.score_histogram(scores["test"], y_test, threshold["value"], data_source,
                                   score_label=label, split="test"), outputs["histogram"])
    if outputs.get("roc"):
        save(plots.roc_figure({"val": (y_val, scores["val"]), "test": (y_test, scores["test"])},
                              threshold["value"], data_source, score_label=label),
             outputs["roc"])
    return metrics
