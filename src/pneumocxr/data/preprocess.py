"""Pixel preprocessing: bit-depth scaling, CLAHE, aspect-keeping resize, center crop.

The pipeline for one image (grayscale, as decoded by :mod:`pneumocxr.data.images`)::

    decoded gray  ->  [CLAHE, on the decoded image]  ->  resize shorter side to ``resize``
                  ->  center crop ``crop`` x ``crop``  ->  uint8

CLAHE runs before resizing so its tiles see the image at the resolution it was acquired at
(``tile_grid`` tiles per side whatever the size). Shrinking uses ``cv2.INTER_AREA`` (averages
source pixels, no aliasing); enlarging (small images, or the 224-px Kaggle derivatives at
``resize: 256``) uses ``cv2.INTER_LINEAR`` (no ringing, unlike cubic).

Bit depth rule (:func:`to_uint8`): 8-bit images pass unchanged. Anything wider (16-bit PNGs,
32-bit integer or float arrays) is rescaled linearly from the image's own ``[min, max]`` to
``[0, 255]`` and rounded: nothing is clipped, and data stored in 16 bits with 10-14 significant
bits (common for X-ray exports) keeps its full contrast instead of turning near-black. A
constant image becomes all zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import cv2
import numpy as np

from ..errors import InputError

VARIANTS = ("plain", "clahe")


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` as uint8: uint8 unchanged, other dtypes min-max scaled (see module doc)."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.size == 0:
        return arr.astype(np.uint8)
    data = arr.astype(np.float64)
    if not np.all(np.isfinite(data)):
        raise InputError("image has NaN or infinite values; cannot scale it to 8 bits")
    lo, hi = float(data.min()), float(data.max())
    if hi == lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (data - lo) * (255.0 / (hi - lo))
    return np.rint(scaled).astype(np.uint8)


def apply_clahe(gray: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV) of a uint8 grayscale image."""
    _check_gray_u8(gray)
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid),) * 2)
    return clahe.apply(np.ascontiguousarray(gray))


def resize_shorter(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` pixels, keeping the aspect ratio.

    The longer side becomes ``round(long * size / short)``. ``INTER_AREA`` when shrinking,
    ``INTER_LINEAR`` when enlarging; an image already at ``size`` is returned unchanged.
    """
    _check_gray_u8(gray)
    h, w = gray.shape
    short = min(h, w)
    if short == size:
        return gray
    if h <= w:
        new_h, new_w = size, max(size, int(round(w * size / h)))
    else:
        new_h, new_w = max(size, int(round(h * size / w))), size
    interp = cv2.INTER_AREA if size < short else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(gray), (new_w, new_h), interpolation=interp)


def center_crop(img: np.ndarray, crop: int) -> np.ndarray:
    """The central ``crop`` x ``crop`` window (offsets rounded down)."""
    h, w = img.shape[:2]
    if crop > h or crop > w:
        raise InputError(f"cannot center-crop {crop}x{crop} from a {h}x{w} image")
    top, left = (h - crop) // 2, (w - crop) // 2
    return img[top:top + crop, left:left + crop]


@dataclass(frozen=True)
class PreprocessConfig:
    """Output geometry and CLAHE settings (params ``prepare.resize/crop/clahe``).

    Build it with :meth:`from_params` (the schema checks the values and fills the defaults).
    """

    resize: int
    crop: int
    clip_limit: float
    tile_grid: int

    @classmethod
    def from_params(cls, prepare: Mapping[str, Any] | None = None) -> "PreprocessConfig":
        """From params ``prepare`` (or a checkpoint's record of it): resize, crop, clahe."""
        from ..config import complete

        p = complete("prepare", {k: v for k, v in (prepare or {}).items()
                                 if k in ("resize", "crop", "clahe", "variants")})
        return cls(resize=p["resize"], crop=p["crop"], clip_limit=p["clahe"]["clip_limit"],
                   tile_grid=p["clahe"]["tile_grid"])


def preprocess(gray: np.ndarray, cfg: PreprocessConfig, clahe: bool = False) -> np.ndarray:
    """One decoded grayscale image -> uint8 ``(cfg.crop, cfg.crop)`` (optionally with CLAHE)."""
    img = to_uint8(gray)
    if clahe:
        img = apply_clahe(img, cfg.clip_limit, cfg.tile_grid)
    img = resize_shorter(img, cfg.resize)
    return np.ascontiguousarray(center_crop(img, cfg.crop))


def make_variants(gray: np.ndarray, cfg: PreprocessConfig,
                  variants: Iterable[str] = VARIANTS) -> dict[str, np.ndarray]:
    """``{variant: preprocessed image}`` for each requested variant (``plain``, ``clahe``)."""
    out = {}
    for name in variants:
        if name not in VARIANTS:
            raise InputError(f"unknown variant {name!r}; expected one of {VARIANTS}")
        out[name] = preprocess(gray, cfg, clahe=(name == "clahe"))
    return out


def _check_gray_u8(img: np.ndarray) -> None:
    if img.ndim != 2 or img.dtype != np.uint8:
        raise InputError(f"expected a 2-D uint8 grayscale image, got shape {img.shape} "
                         f"dtype {img.dtype}")
