"""The prepared-data format: what ``prepare`` writes and every later stage reads.

Layout of the ``prepare`` output folder (default ``data/processed``)::

    metadata.csv            one row per kept image, in array order within each split
    info.json               data_source, root, resize, crop, variants, clahe, counts per split
    <variant>/<split>.npy   uint8 array (N, crop, crop); variant in params prepare.variants
                            (``plain``: classifiers, ``clahe``: autoencoder)

The human-facing reports of ``prepare`` live in ``results/data/``: ``summary.json`` (counts per
split/class/subtype, patients, rejected files, duplicate groups, leakage; a DVC metric),
``rejected.csv`` (file, reason) and ``overview.png``.

Splits: ``train`` (official train minus the carved validation patients), ``val`` (carved from
train, patient-grouped and stratified), ``test`` (official test), ``val_official`` (the official
val folder, kept as an extra evaluation set).

metadata.csv columns: ``split, index, file, official_split, label, subtype, patient, sha256,
orig_width, orig_height``; ``label`` is ``NORMAL``/``PNEUMONIA``, ``subtype`` is
``normal``/``bacteria``/``virus`` or ``unknown`` (sources without subtypes, e.g. medmnist).
``file`` is the path relative to ``data.root`` (``train/NORMAL/IM-0115-0001.jpeg``) or, for an
npz, ``{split}_images[i]``; ``official_split`` is the folder/npz split (``train``/``val``/``test``)
the image came from; ``sha256`` is of the file bytes (npz: of the image's array bytes);
``orig_width``/``orig_height`` are the stored image size before preprocessing. Rows are ordered
by official split, class folder and file name (npz: index), so array order never depends on the
number of threads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError, MissingInputError

SPLITS = ("train", "val", "test", "val_official")
METADATA_COLUMNS = (
    "split", "index", "file", "official_split", "label", "subtype", "patient", "sha256",
    "orig_width", "orig_height",
)
SUBTYPE_TO_3 = {"normal": 0, "bacteria": 1, "virus": 2}


@dataclass
class SplitData:
    """One split of the prepared data.

    Attributes:
        images: uint8 array (N, H, W), memory-mapped read-only.
        meta: metadata rows of this split, in array order.
        data_source: ``kermany``, ``medmnist`` or ``demo`` (from info.json).
    """

    split: str
    variant: str
    images: np.ndarray
    meta: pd.DataFrame
    data_source: str

    @property
    def y_binary(self) -> np.ndarray:
        """0 normal, 1 pneumonia."""
        return (self.meta["label"].to_numpy() == "PNEUMONIA").astype(np.int64)

    @property
    def y_three_class(self) -> np.ndarray:
        """0 normal, 1 bacteria, 2 virus; raises if any subtype is unknown."""
        sub = self.meta["subtype"].to_numpy()
        if np.any(sub == "unknown"):
            raise InputError(
                f"split {self.split!r} has images without a bacteria/virus subtype "
                f"(data_source={self.data_source}); the 3-class task needs the Kermany file names"
            )
        return np.array([SUBTYPE_TO_3[s] for s in sub], dtype=np.int64)

    @property
    def has_subtypes(self) -> bool:
        return not bool(np.any(self.meta["subtype"].to_numpy() == "unknown"))

    @property
    def patients(self) -> np.ndarray:
        return self.meta["patient"].to_numpy()

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        counts = self.meta["subtype"].value_counts().to_dict()
        return (f"SplitData(split={self.split!r}, variant={self.variant!r}, n={len(self)}, "
                f"shape={tuple(self.images.shape[1:])}, source={self.data_source!r}, "
                f"subtypes={counts})")


def read_info(processed_dir: str | Path) -> dict:
    path = Path(processed_dir) / "info.json"
    if not path.is_file():
        raise MissingInputError(f"{path}: missing; run the prepare stage first")
    return json.loads(path.read_text())


def preprocess_meta(processed_dir: str | Path, variant: str) -> dict[str, Any] | None:
    """How the prepared images a model saw were made (stored in its checkpoint, so `predict`
    applies the same resize / crop / CLAHE to new images); None when ``info.json`` does not
    record it (arrays not written by ``prepare``)."""
    info = read_info(processed_dir)
    if not {"resize", "crop", "clahe"} <= set(info):
        return None
    return {"resize": info["resize"], "crop": info["crop"], "clahe": info["clahe"],
            "variant": variant}


def load_split(processed_dir: str | Path, split: str, variant: str = "plain") -> SplitData:
    """Load one split of the prepared data (images memory-mapped)."""
    root = Path(processed_dir)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    arr_path = root / variant / f"{split}.npy"
    if not arr_path.is_file():
        raise MissingInputError(
            f"{arr_path}: missing (variant {variant!r}, split {split!r}); check prepare.variants "
            "in params.yaml and rerun prepare"
        )
    meta_path = root / "metadata.csv"
    if not meta_path.is_file():
        raise MissingInputError(f"{meta_path}: missing; run the prepare stage first")
    meta = pd.read_csv(meta_path, dtype={"patient": str, "file": str})
    meta = meta[meta["split"] == split].sort_values("index").reset_index(drop=True)
    images = np.load(arr_path, mmap_mode="r")
    if len(images) != len(meta):
        raise InputError(
            f"{arr_path}: {len(images)} images but metadata.csv lists {len(meta)} for split "
            f"{split!r}; the prepared data is inconsistent, rerun prepare"
        )
    return SplitData(split, variant, images, meta, read_info(root).get("data_source", "unknown"))
