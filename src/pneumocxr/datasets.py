"""In-memory training data: uint8 arrays, batched gathering and tensor augmentation.

The prepared arrays (:mod:`pneumocxr.data.arrays`) are decoded once by ``prepare``; training
only gathers rows of a uint8 array, converts a whole batch to float and augments it on the
tensor with one ``affine_grid``/``grid_sample`` call (random resized crop, flip and rotation
combined into one affine map per image) plus per-image brightness and contrast. No image is
decoded per epoch and no worker processes are needed.

Every random draw takes an explicit ``torch.Generator``, whose state the resume cache saves.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import InputError
from . import CLASS_NAMES_3, CLASS_NAMES_BINARY
from .data.arrays import load_split
from .settings import AugmentSettings

# Class names per task; index 0 is "normal" in both, so p(pneumonia) = 1 - p(normal).
TASKS: dict[str, tuple[str, ...]] = {
    "binary": CLASS_NAMES_BINARY,
    "three_class": CLASS_NAMES_3,
}


class ArrayDataset(Dataset):
    """Images (N, H, W) uint8 with integer labels, held in memory.

    Attributes:
        images: uint8 array (N, H, W) (a memory-mapped array is read into memory).
        labels: int64 array (N,), values in ``[0, len(class_names))``.
        class_names: names of the label values.
        patients: optional patient id per image (for grouped statistics).
        meta: optional metadata rows (``metadata.csv`` of the split), in array order.

    ``dataset[i]`` is ``(uint8 tensor (1, H, W), label)``; :func:`iterate_batches` gathers whole
    batches faster than a DataLoader over items.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                 patients: np.ndarray | None = None, name: str = "data",
                 meta: pd.DataFrame | None = None):
        # a memory-mapped array (load_split) is copied into memory once, here
        images = np.array(images, copy=True) if isinstance(images, np.memmap) else \
            np.ascontiguousarray(images)
        labels = np.asarray(labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise InputError(f"{name}: images must be a uint8 array (N, H, W), got "
                             f"{images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise InputError(f"{name}: {len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise InputError(f"{name}: no images")
        if labels.min() < 0 or labels.max() >= len(class_names):
            raise InputError(f"{name}: labels must lie in [0, {len(class_names)}), got "
                             f"{labels.min()}..{labels.max()}")
        self.images = images
        self.labels = labels
        self.class_names = list(class_names)
        self.patients = None if patients is None else np.asarray(patients)
        self.name = name
        self.meta = meta

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i][None].copy()), int(self.labels[i])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.class_names)).tolist()

    def __repr__(self) -> str:
        counts = dict(zip(self.class_names, self.class_counts()))
        return (f"ArrayDataset(name={self.name!r}, n={len(self)}, size={self.image_size}, "
                f"classes={counts})")


def check_task(task: str) -> tuple[str, ...]:
    """Class names of ``task``; ValueError for an unknown task."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


def load_task_split(processed_dir: str | Path, split: str, task: str,
                    variant: str = "plain") -> tuple[ArrayDataset, str]:
    """Load one prepared split with the labels of ``task``: ``(dataset, data_source)``.

    Raises FileNotFoundError for a missing split and ValueError when the 3-class task meets a
    source without bacteria/virus subtypes (e.g. ``medmnist``).
    """
    class_names = check_task(task)
    sd = load_split(processed_dir, split, variant)
    if task == "three_class" and not sd.has_subtypes:
        raise InputError(
            f"{processed_dir}: split {split!r} (data_source={sd.data_source}) has no "
            "bacteria/virus subtypes, so the 3-class task cannot run on it; use data.source: "
            "kermany (subtypes come from the Kermany file names) or train the binary task only")
    labels = sd.y_binary if task == "binary" else sd.y_three_class
    ds = ArrayDataset(np.asarray(sd.images), labels, class_names, sd.patients,
                      name=f"{split} ({task})", meta=sd.meta)
    return ds, sd.data_source


def balanced_sample_weights(labels: np.ndarray) -> np.ndarray:
    """Per-image sampling weights giving every class the same expected share of a batch."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    return 1.0 / counts[labels]


def epoch_indices(n: int, generator: torch.Generator, *, shuffle: bool = True,
                  sample_weights: np.ndarray | None = None) -> np.ndarray:
    """Image order of one epoch: a permutation, or ``n`` weighted draws with replacement."""
    if sample_weights is not None:
        w = torch.as_tensor(sample_weights, dtype=torch.float64)
        return torch.multinomial(w, n, replacement=True, generator=generator).numpy()
    if shuffle:
        return torch.randperm(n, generator=generator).numpy()
    return np.arange(n)


def iterate_batches(dataset: ArrayDataset, batch_size: int, indices: np.ndarray | None = None,
                    drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 (B, 1, H, W), int64 (B,))`` batches in the order of ``indices``."""
    if indices is None:
        indices = np.arange(len(dataset))
    stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = indices[start:start + batch_size]
        x = torch.from_numpy(dataset.images[idx])[:, None]
        y = torch.from_numpy(dataset.labels[idx])
        yield x, y


def to_float(batch: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1], resized (antialiased bilinear) to ``size``."""
    x = batch.float().div_(255.0)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).clamp_(0.0, 1.0)
    return x


#: random erasing (``train.augment.erase``): the rectangle's share of the image's area and its
#: aspect range, Zhong et al. (2020)'s defaults
ERASE_AREA = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)


@dataclass(frozen=True)
class Augment(AugmentSettings):
    """Random augmentation of a float batch (B, C, H, W) in [0, 1], square images.

    Its fields are params ``train.augment`` (:class:`~pneumocxr.settings.AugmentSettings`;
    ``Augment.from_params(mapping)`` fills in the schema's defaults):
        scale: range of the crop's area as a fraction of the image (random resized crop);
            ``(1, 1)`` with ``ratio (1, 1)`` disables cropping.
        ratio: range of the crop's aspect ratio (sampled log-uniformly).
        hflip: probability of a horizontal flip.
        rotation: maximum rotation in degrees (uniform in ``[-rotation, rotation]``).
        brightness: brightness factor drawn from ``[1 - b, 1 + b]`` (multiplies the image).
        contrast: contrast factor drawn from ``[1 - c, 1 + c]`` (scales around the image mean).
        gamma: the image raised to ``exp(U(-gamma, gamma))`` (another detector's response curve).
        blur: Gaussian blur with sigma ``U(0, blur)`` pixels of the output (another focal spot,
            another resampling).
        noise: additive Gaussian noise with std ``U(0, noise)`` (another dose).
        erase: probability of random erasing (Zhong et al. 2020): a rectangle of
            ``ERASE_AREA`` of the image's area and aspect ``ERASE_RATIO`` (log-uniform) filled
            with uniform noise, so no one region (a marker, a label, a lung) decides alone.

    The acquisition jitter (gamma, blur, noise) draws its random numbers after the others, and
    only when one of them is on, so turning it on leaves the other draws as they were; the
    erasing draws come last, only when it is on.
    """

    @property
    def geometric(self) -> bool:
        return self.scale != (1.0, 1.0) or self.ratio != (1.0, 1.0) or self.hflip > 0 \
            or self.rotation > 0

    @property
    def acquisition(self) -> bool:
        return self.gamma > 0 or self.blur > 0 or self.noise > 0

    def random_erase(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each image of ``x`` with probability ``erase`` gets one rectangle of noise."""
        n, c, h, w = x.shape
        u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
        area = ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * u[:, 0]
        lo, hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
        r = torch.exp(lo + (hi - lo) * u[:, 1])
        eh, ew = torch.sqrt(area * r).clamp(max=1.0), torch.sqrt(area / r).clamp(max=1.0)
        y0, x0 = (1.0 - eh) * u[:, 2], (1.0 - ew) * u[:, 3]
        on = u[:, 4] < self.erase
        ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
        rows = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + eh)[:, None])
        cols = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + ew)[:, None])
        mask = (rows[:, :, None] & cols[:, None, :] & on[:, None, None])[:, None]
        fill = torch.rand(x.shape, generator=generator)
        return torch.where(mask.to(x.device), fill.to(x.device, x.dtype), x)

    def affine(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 2, 3) affine maps from output to input coordinates (``affine_grid`` convention)."""
        u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        log_r = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * u[:, 1]
        r = torch.exp(log_r)
        w = torch.sqrt(area * r).clamp(max=1.0)
        h = torch.sqrt(area / r).clamp(max=1.0)
        cx = (1.0 - w) * (2.0 * u[:, 2] - 1.0)
        cy = (1.0 - h) * (2.0 * u[:, 3] - 1.0)
        flip = torch.where(u[:, 4] < self.hflip, -1.0, 1.0).to(torch.float64)
        angle = math.radians(self.rotation) * (2.0 * u[:, 5] - 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([w * cos * flip, -w * sin, cx], dim=1),
            torch.stack([h * sin * flip, h * cos, cy], dim=1),
        ], dim=1)
        return theta.float()

    def __call__(self, x: torch.Tensor, generator: torch.Generator,
                 size: int | None = None) -> torch.Tensor:
        """Augment ``x`` (B, C, H, W) float in [0, 1]; output (B, C, size, size)."""
        n, c = x.shape[:2]
        size = size or x.shape[-1]
        if self.geometric:
            theta = self.affine(n, generator).to(x.device)
            grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)
        elif x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)
        u = torch.rand(n, 2, generator=generator).to(x.device)
        v = torch.rand(n, 3, generator=generator).to(x.device) if self.acquisition else None
        if v is not None and self.gamma > 0:
            x = x.clamp(min=0.0) ** torch.exp(self.gamma * (2.0 * v[:, 0] - 1.0)).view(n, 1, 1, 1)
        if v is not None and self.blur > 0:
            x = gaussian_blur(x, self.blur * v[:, 1], int(math.ceil(3.0 * self.blur)))
        if self.brightness > 0:
            x = x * (1.0 + self.brightness * (2.0 * u[:, 0] - 1.0)).view(n, 1, 1, 1)
        if self.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (1.0 + self.contrast * (2.0 * u[:, 1] - 1.0)).view(n, 1, 1, 1) + mean
        if v is not None and self.noise > 0:
            z = torch.randn(x.shape, generator=generator).to(x.device)
            x = x + z * (self.noise * v[:, 2]).view(n, 1, 1, 1)
        if self.erase > 0:
            x = self.random_erase(x, generator)
        return x.clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Blur each image of ``x`` (B, C, H, W) with its own Gaussian ``sigma`` (B,) in pixels
    (separable, kernel ``2 * radius + 1`` wide, reflected edges); sigma 0 leaves it as it is."""
    n, c, h, w = x.shape
    radius = max(0, min(radius, h - 1, w - 1))
    if radius == 0:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.to(x.dtype).clamp(min=1e-3).view(n, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)      # (B*C, K)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)
