"""Checks that keep attribution maps honest: deletion / insertion AUC and model randomisation.

**Deletion / insertion** (Petsiuk et al., RISE, 2018). Rank the pixels by attribution, highest
first (ties keep raster order). Deletion replaces the top ``k`` share of pixels by the baseline
value, for ``k`` on ``steps + 1`` equally spaced fractions in [0, 1], and records the target
score (softmax probability of the explained class); insertion starts from a blurred copy of
the image (Gaussian, sigma ``blur * side``) and puts the top ``k`` share of original pixels
back. The area under each curve (trapezoid rule over the fraction) summarises it: a faithful
map makes the probability fall fast on deletion (low AUC) and rise fast on insertion (high
AUC). A random ranking (:func:`random_attribution`) gives the reference every method should
beat on the same images.

**Model randomisation** (Adebayo et al., "Sanity checks for saliency maps", 2018). A map that
barely changes when the model's learned weights are replaced by random ones explains the
image, not the model. :func:`randomized_model` re-initialises the head (``scope="head"``) or
every layer (``scope="all"``) of a copy of the model with a seeded generator;
:func:`rank_correlation` is the Spearman correlation between the trained and the randomised
model's maps (near 0: the map depends on what the model learned).
"""

from __future__ import annotations

import copy
import math
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from ..errors import InputError
from .targets import Target, model_device

SCOPES = ("head", "all")


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding (identity for sigma 0)."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1)
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(y, k.transpose(-1, -2).expand(c, 1, -1, 1), groups=c)


def pixel_order(attribution: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Flat pixel indices, highest attribution first (stable: ties keep raster order)."""
    a = torch.as_tensor(np.asarray(attribution, dtype=np.float64)).flatten()
    return torch.sort(-a, stable=True).indices


def curve_auc(scores: np.ndarray) -> float:
    """Area under a curve sampled at equally spaced fractions of [0, 1] (trapezoid rule)."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) < 2:
        raise InputError("an AUC needs at least two points")
    return float(np.sum((s[1:] + s[:-1]) / 2.0) / (len(s) - 1))


@torch.inference_mode()
def deletion_insertion(
    model: nn.Module,
    image: torch.Tensor,
    attribution: torch.Tensor | np.ndarray,
    target: Target,
    *,
    steps: int = 16,
    baseline: float = 0.5,
    blur: float = 0.05,
    batch_size: int = 64,
) -> dict[str, object]:
    """Deletion and insertion curves and AUCs of one image (C, H, W) in [0, 1].

    Returns ``{"fractions", "deletion", "insertion", "deletion_auc", "insertion_auc"}``.
    """
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if image.ndim != 3:
        raise InputError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    c, h, w = image.shape
    attribution = np.asarray(attribution)
    if attribution.shape != (h, w):
        raise InputError(f"attribution {attribution.shape} does not match the image {(h, w)}")
    device = model_device(model)
    x = image.to(device, torch.float32)
    order = pixel_order(attribution).to(device)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.rint(fractions * h * w).astype(int)
    # rank[p] = position of pixel p in the order; pixel p is "hit" at step k if rank < count_k
    rank = torch.empty(h * w, dtype=torch.long, device=device)
    rank[order] = torch.arange(h * w, device=device)
    hit = (rank.view(1, h, w) < torch.as_tensor(counts, device=device).view(-1, 1, 1))[:, None]
    deleted = torch.where(hit, torch.as_tensor(baseline, dtype=x.dtype, device=device), x)
    blurred = _gaussian_blur(x[None], blur * min(h, w))[0]
    inserted = torch.where(hit, x, blurred)
    was_training = model.training
    model.eval()
    out = []
    batch = torch.cat([deleted, inserted])
    for start in range(0, len(batch), batch_size):
        out.append(target(model(batch[start:start + batch_size])).reshape(-1).double().cpu())
    model.train(was_training)
    scores = torch.cat(out).numpy()
    dele, ins = scores[:steps + 1], scores[steps + 1:]
    return {"fractions": fractions, "deletion": dele, "insertion": ins,
            "deletion_auc": curve_auc(dele), "insertion_auc": curve_auc(ins)}


def random_attribution(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A seeded uniform random map: the ranking every attribution method should beat."""
    return np.random.default_rng(seed).random(shape)


def _reset(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()


def randomized_model(model: nn.Module, scope: str = "all", seed: int = 0) -> nn.Module:
    """A copy of ``model`` with re-initialised weights (the original is untouched).

    ``scope="head"``: only the last linear layer (``fc`` of a registry classifier, else the
    last ``nn.Linear``); ``"all"``: every layer with ``reset_parameters`` (convolutions, linear
    layers, and batch norm, whose running statistics are reset too). Initialisation draws
    from torch's default generator seeded with ``seed``; the global RNG state is restored.
    """
    if scope not in SCOPES:
        raise InputError(f"randomisation scope must be one of {SCOPES}, got {scope!r}")
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if scope == "all":
            clone.apply(_reset)
        else:
            linears = [m for name, m in clone.named_modules()
                       if isinstance(m, nn.Linear) and name.split(".")[-1] == "fc"]
            linears = linears or [m for m in clone.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise InputError("scope='head' needs a linear output layer; use scope='all'")
            linears[-1].reset_parameters()
    return clone.eval()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (NaN when either is constant)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"maps differ in size: {a.size} vs {b.size}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def summarize(values: np.ndarray | list[float]) -> dict[str, float]:
    """Mean, standard deviation, median, quartiles and count of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"n": 0, "mean": float("nan"), "sd": float("nan"), "median": float("nan"),
                "q25": float("nan"), "q75": float("nan")}
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n": int(len(v)), "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            "median": float(med), "q25": float(q25), "q75": float(q75)}

