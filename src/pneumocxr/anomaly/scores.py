"""Anomaly scores: how unlike the normal training images an image is, given the autoencoder.

* pixel errors between an image and its reconstruction (``mse``, ``ssim``, ``structure``,
  ``gradient``), each aggregated by ``mean``, ``max`` or ``topk`` (the mean of the worst
  ``fraction`` of pixels) over the image or over the lung fields of the normal training
  images (``region: lung_prior``);
* ``feature_error``: the error in the encoder's feature space;
* densities fitted on the normal training images: ``latent_mahalanobis`` (a Gaussian over the
  bottleneck codes, Ledoit-Wolf shrinkage), ``latent_knn``, ``feature_stats`` (per-channel
  statistics of the encoder's responses) and ``patch_mahalanobis`` (a Gaussian per position,
  PaDiM-style).

:func:`create_score` builds one from params ``anomaly.score``; :func:`fit_score` fits it on the
normal training images (a no-op for pixel errors); :func:`compute_scores` scores images. The
training of the autoencoder does not import this module: editing a score retrains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InputError
from ..models import ConvAutoencoder


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


def _local_moments(x: torch.Tensor, y: torch.Tensor, window: int, sigma: float):
    """Gaussian-weighted local means, variances and covariance of two (N, 1, H, W) batches."""
    bh = _blur_matrix(x.shape[-2], window, sigma).to(x)
    bw = _blur_matrix(x.shape[-1], window, sigma).to(x).t()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return bh @ t @ bw

    mx, my = blur(x), blur(y)
    return mx, my, blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
             data_range: float = 1.0) -> torch.Tensor:
    """Local structural similarity (Wang et al. 2004) of two (N, 1, H, W) batches, per pixel.

    Gaussian-weighted local means, variances and covariance (reflect padding, so the map has
    the size of the input); C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L the data range.
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my, vx, vy, cxy = _local_moments(x, y, window, sigma)
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def structure_map(x: torch.Tensor, y: torch.Tensor, window: int = 21, sigma: float = 3.5,
                  data_range: float = 1.0) -> torch.Tensor:
    """The structure term of SSIM alone, per pixel: the local correlation of two (N, 1, H, W)
    batches, (cov + C3) / (sd_x sd_y + C3) with C3 = C2 / 2 (Wang et al. 2004, eq. 9).

    Unlike SSIM it ignores the luminance and contrast terms, so a brighter, darker or flatter
    acquisition of the same anatomy scores the same, while a region whose pattern the
    reconstruction does not follow (an opacity the autoencoder of normals cannot draw) does not.
    """
    c3 = (0.03 * data_range) ** 2 / 2
    _, _, vx, vy, cxy = _local_moments(x, y, window, sigma)
    return (cxy + c3) / (vx.clamp_min(0).sqrt() * vy.clamp_min(0).sqrt() + c3)


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


def aggregate(maps: torch.Tensor, how: str = "mean", fraction: float = 0.01,
              region: torch.Tensor | None = None) -> torch.Tensor:
    """One number per map: ``mean`` of all locations, ``max``, or ``topk``: the mean of the
    largest ``fraction`` of locations (at least one). ``region``: a boolean (H, W) mask; only
    the locations inside it count."""
    flat = maps[..., region.to(maps.device)] if region is not None else maps
    flat = flat.flatten(1)
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
    #: horizontal stretches :func:`compute_scores` scores each image at (keeping the lowest)
    stretches: tuple[float, ...] = (1.0,)

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


REGIONS = ("image", "lung_prior")


def lung_prior(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """Where the lungs of aligned normal chest X-rays lie: the pixels that the lung-field
    heuristic (:func:`pneumocxr.explain.lungmask.lung_mask`, its default sizes) puts inside
    the lungs in more than ``threshold`` of the (N, 1, H, W) images in [0, 1].

    One fixed mask for every image, fitted on normal training images only, so a test image's
    own opacities cannot shrink the region that is scored (a per-image mask would cut a dense
    consolidation out of the lung field it sits in).
    """
    from ..explain.lungmask import lung_mask

    if len(images) == 0:
        raise InputError("the lung-field prior needs normal training images to fit")
    u8 = (images[:, 0].cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    share = np.mean([lung_mask(im) for im in u8], axis=0)
    mask = torch.from_numpy(share > threshold)
    if not mask.any():
        raise InputError(f"the lung-field prior is empty: no pixel is inside the lung mask of "
                         f"more than {threshold:g} of the {len(u8)} normal training images; "
                         "lower anomaly.score.region_threshold or check the images")
    return mask


class ReconstructionError(AnomalyScore):
    """Pixel-space reconstruction error, aggregated over the image or the lung fields.

    ``kind``: ``mse`` squared error; ``ssim``: (1 - SSIM) / 2, structural dissimilarity;
    ``structure``: (1 - structure term of SSIM) / 2, the local decorrelation of input and
    reconstruction, blind to local brightness and contrast (:func:`structure_map`);
    ``gradient``: absolute difference of Sobel gradient magnitudes (edges lost or invented).
    ``window`` / ``sigma``: the Gaussian window of ``ssim`` and ``structure``. ``stretches``:
    horizontal stretch factors; :func:`compute_scores` keeps an image's lowest score over
    them (``(1.0,)``: the image as it is). ``region``:
    ``image`` (every pixel) or ``lung_prior``: only the pixels inside the lung fields of the
    normal training images (:func:`lung_prior`, fitted), so borders, labels and collimation,
    which change with the acquisition and not with the disease, do not count.
    """

    def __init__(self, kind: str = "mse", aggregation: str = "mean", fraction: float = 0.01,
                 window: int = 11, sigma: float = 1.5, region: str = "image",
                 region_threshold: float = 0.3, stretches: Sequence[float] = (1.0,)):
        if kind not in ("mse", "ssim", "structure", "gradient"):
            raise InputError(f"unknown reconstruction error {kind!r}; expected mse, ssim, "
                             "structure or gradient")
        if region not in REGIONS:
            raise InputError(f"anomaly.score.region must be one of {list(REGIONS)}, got "
                             f"{region!r}")
        if kind in ("ssim", "structure") and (window < 3 or window % 2 == 0 or sigma <= 0):
            raise InputError(f"anomaly.score: the {kind} window must be an odd number of pixels "
                             f">= 3 and sigma > 0, got window {window}, sigma {sigma}")
        self.kind, self.aggregation, self.fraction = kind, aggregation, fraction
        self.window, self.sigma = int(window), float(sigma)
        self.region, self.region_threshold = region, float(region_threshold)
        self.stretches = tuple(float(f) for f in stretches)
        if not self.stretches or not all(0.5 <= f <= 2.0 for f in self.stretches):
            raise InputError(f"anomaly.score.stretches: one or more horizontal stretch factors "
                             f"in [0.5, 2], got {list(stretches)}")
        self.region_mask: torch.Tensor | None = None
        self.name = kind
        self.needs_fit = region != "image"

    @property
    def label(self) -> str:
        what = {"mse": "squared error", "ssim": "SSIM dissimilarity",
                "structure": "SSIM-structure dissimilarity",
                "gradient": "gradient-map error"}[self.kind]
        where = ", lung fields" if self.region == "lung_prior" else ""
        if self.stretches != (1.0,):
            where += ", best of " + "/".join(f"{f:g}" for f in self.stretches) + " stretches"
        return f"{what} ({aggregation_label(self.aggregation, self.fraction)}{where})"

    @property
    def map_label(self) -> str:
        return {"mse": "(input - recon.)^2", "ssim": "(1 - SSIM) / 2",
                "structure": "(1 - SSIM structure) / 2",
                "gradient": "|grad input - grad recon.|"}[self.kind]

    def fit(self, forwards: Iterable[Forward]) -> "ReconstructionError":
        if self.region == "lung_prior":
            self.region_mask = lung_prior(torch.cat([fw.x.cpu() for fw in forwards]),
                                          self.region_threshold)
        return self

    def map(self, fwd: Forward) -> torch.Tensor:
        x, r = fwd.x, fwd.recon
        if self.kind == "mse":
            return (x - r) ** 2
        if self.kind == "ssim":
            return (1.0 - ssim_map(x, r, self.window, self.sigma)) / 2.0
        if self.kind == "structure":
            return (1.0 - structure_map(x, r, self.window, self.sigma)) / 2.0
        return (sobel_magnitude(x) - sobel_magnitude(r)).abs()

    def score(self, fwd: Forward) -> torch.Tensor:
        region = None
        if self.region == "lung_prior":
            if self.region_mask is None:
                raise RuntimeError(f"{self.name}: fit the lung-field prior before scoring")
            if tuple(self.region_mask.shape) != tuple(fwd.x.shape[-2:]):
                raise InputError(f"{self.name}: the lung-field prior was fitted on "
                                 f"{tuple(self.region_mask.shape)} images, got "
                                 f"{tuple(fwd.x.shape[-2:])}; score images of the training "
                                 "input size")
            region = self.region_mask
        return aggregate(self.map(fwd), self.aggregation, self.fraction, region)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.region_mask is None else {"region_mask": self.region_mask}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.region_mask = state.get("region_mask")


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


def _pixel_error(kind: str, aggregation: str = "mean", fraction: float = 0.01, window: int = 11,
                 sigma: float = 1.5, region: str = "image", region_threshold: float = 0.3,
                 stretches: Sequence[float] = (1.0,), **_: Any) -> ReconstructionError:
    return ReconstructionError(kind, aggregation, fraction, window, sigma, region,
                               region_threshold, stretches)


#: Score registry: name -> factory taking the ``anomaly.score`` params.
SCORES: dict[str, Callable[..., AnomalyScore]] = {
    **{kind: partial(_pixel_error, kind) for kind in ("mse", "ssim", "structure", "gradient")},
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


def stretch_width(x: torch.Tensor, factor: float) -> torch.Tensor:
    """(N, 1, H, W) images stretched horizontally by ``factor`` about their centre, same size:
    a factor above 1 widens the anatomy and crops the sides, below 1 narrows it and repeats
    the edge columns (outside the lung fields, so the lung-field scores ignore them)."""
    if factor == 1.0:
        return x
    w = x.shape[-1]
    nw = max(1, int(round(w * factor)))
    mode = "area" if nw < w else "bilinear"
    y = F.interpolate(x, size=(x.shape[-2], nw), mode=mode,
                      **({} if mode == "area" else {"align_corners": False}))
    if nw >= w:
        left = (nw - w) // 2
        return y[..., left:left + w]
    left = (w - nw) // 2
    return F.pad(y, (left, w - nw - left, 0, 0), mode="replicate")


def compute_scores(scorer: AnomalyScore, model: ConvAutoencoder, x: torch.Tensor,
                   batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Anomaly score of every image in ``x`` (higher = less like the normal training images).

    A score with ``stretches`` (pixel errors) scores each image at every horizontal stretch
    (:func:`stretch_width`) and keeps the lowest: an image whose source was squashed to a
    square from another aspect ratio than the training normals gets the stretch that matches
    them best, while an opacity no stretch removes keeps its score.
    """
    if len(x) == 0:
        return np.zeros(0)
    per = [torch.cat([scorer.score(fw).detach().cpu()
                      for fw in iterate_forwards(model, stretch_width(x, f), batch_size,
                                                 scorer.needs_recon_feats, progress)])
           for f in scorer.stretches]
    return torch.stack(per).amin(0).numpy().astype(np.float64)


# --------------------------------------------------------------------------------------------
# Threshold and metrics
# --------------------------------------------------------------------------------------------
