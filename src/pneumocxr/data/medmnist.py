"""PneumoniaMNIST-style ``.npz`` files (MedMNIST v2 key layout), binary labels only.

Keys: ``{train,val,test}_images`` (N, H, W) or (N, H, W, 1|3) and ``{train,val,test}_labels``
(N,) or (N, 1) with 0 = normal, 1 = pneumonia. File names carry no subtype or patient, so every
image gets subtype ``unknown`` and is its own patient (``train-00017``); stages that need the
bacteria/virus split check :attr:`pneumocxr.data.arrays.SplitData.has_subtypes`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError, MissingInputError
from .preprocess import to_uint8

NPZ_SPLITS = ("train", "val", "test")
LABEL_NAMES = ("NORMAL", "PNEUMONIA")
WHERE_FROM = (
    "PneumoniaMNIST comes from MedMNIST v2 (https://medmnist.com, Zenodo "
    "doi:10.5281/zenodo.10519652, file pneumoniamnist.npz or pneumoniamnist_224.npz); "
    "or run the synthetic demo instead: `snakemake --configfile config/demo.yaml` (or `make demo`)"
)


@dataclass
class NpzSplit:
    """One split of the npz: ``images`` (N, H, W) as stored, ``labels`` (N,) int 0/1."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    def gray(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 (H, W) grayscale (RGB via 601 luma; wider dtypes min-max)."""
        img = self.images[i]
        if img.ndim == 3:
            if img.shape[2] == 1:
                img = img[:, :, 0]
            else:
                img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        return np.ascontiguousarray(to_uint8(img))


def load_npz(path: str | Path) -> dict[str, NpzSplit]:
    """Read and check a PneumoniaMNIST-style npz.

    Raises:
        FileNotFoundError: the file does not exist (says where the data comes from).
        ValueError: not an npz, keys missing, shapes inconsistent or labels not binary.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: PneumoniaMNIST npz not found. {WHERE_FROM}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; data.source medmnist expects a .npz file "
                         "(for a Kaggle-layout folder use data.source kermany)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable .npz file ({err})") from None
    with npz:
        expected = [f"{s}_{k}" for s in NPZ_SPLITS for k in ("images", "labels")]
        missing = [k for k in expected if k not in npz.files]
        if missing:
            raise InputError(f"{path}: missing keys {missing}; a PneumoniaMNIST-style npz has "
                             f"{expected} (found {sorted(npz.files)})")
        out = {}
        for split in NPZ_SPLITS:
            images = npz[f"{split}_images"]
            labels = npz[f"{split}_labels"]
            out[split] = _check_split(path, split, images, labels)
    shapes = {s.images.shape[1:3] for s in out.values()}
    if len(shapes) > 1:
        raise InputError(f"{path}: image sizes differ between splits {sorted(shapes)}")
    return out


def _check_split(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> NpzSplit:
    if images.ndim == 4 and images.shape[3] in (1, 3):
        pass
    elif images.ndim != 3:
        raise InputError(f"{path}: {split}_images has shape {images.shape}; expected "
                         "(N, H, W) or (N, H, W, 1|3)")
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise InputError(
            f"{path}: {split}_labels has shape {labels.shape}: multi-label data; only binary "
            "labels (0 normal, 1 pneumonia) are supported (PneumoniaMNIST)")
    labels = labels.reshape(len(labels), -1)[:, 0] if labels.ndim == 2 else labels
    if labels.ndim != 1 or len(labels) != len(images):
        raise InputError(f"{path}: {split}_labels has shape {labels.shape} for "
                         f"{len(images)} images")
    values = np.unique(labels)
    if not np.all(np.isin(values, (0, 1))):
        raise InputError(
            f"{path}: {split}_labels has values {values.tolist()}; only binary labels "
            "(0 normal, 1 pneumonia) are supported (PneumoniaMNIST)")
    return NpzSplit(split, images, labels.astype(np.int64))
