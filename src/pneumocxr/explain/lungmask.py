"""An approximate lung-field mask, and the share of an attribution map inside it.

The mask is deliberately simple, so anyone can check what it does. On the CLAHE image
(``prepare`` variant ``clahe``) of side ``s`` pixels:

1. **smooth** with a Gaussian of sigma ``blur * s`` (blurs the ribs into the lung fields);
2. **threshold** with Otsu's method: the dark pixels are air (lungs, and outside the body);
3. **open** with a disk of radius ``opening * s`` (cuts thin dark bridges, e.g. between a
   lung and the air beside the chest) and clear a frame of ``frame * s`` pixels along the
   image border, so air outside the body becomes strips detached from the lungs;
4. **pick the lungs**: among the dark connected components of at least ``min_area`` of the
   image whose centre lies in the middle ``1 - 2 * lateral`` of the width (air beside the
   chest lies in strips along the sides), keep the largest one centred left of the image
   middle and the largest one centred right of it;
5. **fill holes** and **close** with a disk of radius ``closing * s`` (smooth outline).

An image with no acceptable component gets an empty mask; :func:`attribution_share` then
reports NaN for it and the callers count such failures. It is a heuristic (no model, no
labels): ``tests/test_explain.py`` checks that it covers a plausible share of real images, and
the explain stage repeats its findings with the mask eroded and dilated
(:func:`adjust_mask`), so no conclusion hinges on the exact outline.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ..settings import LungMaskSettings


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _px(fraction: float, side: int) -> int:
    return int(round(fraction * side))


def lung_mask(image: np.ndarray, config: LungMaskSettings | None = None) -> np.ndarray:
    """Boolean lung-field mask (H, W) of a uint8 grayscale (CLAHE) chest X-ray (H, W)."""
    cfg = LungMaskSettings.from_params(config)
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise InputError(f"lung_mask needs a uint8 grayscale image (H, W), got {image.dtype} "
                         f"{image.shape}")
    h, w = image.shape
    side = min(h, w)
    smooth = cv2.GaussianBlur(image, (0, 0), cfg.blur * side) if cfg.blur > 0 else image
    _, dark = cv2.threshold(smooth, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    if _px(cfg.opening, side) > 0:
        dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, _disk(_px(cfg.opening, side)))
    f = max(1, _px(cfg.frame, side))
    dark[:f] = 0
    dark[-f:] = 0
    dark[:, :f] = 0
    dark[:, -f:] = 0
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(dark, connectivity=4)
    lo, hi = cfg.lateral * w, (1.0 - cfg.lateral) * w
    candidates = []
    for k in range(1, n):
        area = stats[k][cv2.CC_STAT_AREA]
        if area < cfg.min_area * h * w:
            continue
        cx = centroids[k][0]
        if not lo <= cx <= hi:
            continue
        candidates.append((int(area), k, cx))
    left = [c for c in candidates if c[2] < w / 2]
    right = [c for c in candidates if c[2] >= w / 2]
    keep = [max(half)[1] for half in (left, right) if half]
    mask = np.isin(labels, keep) if keep else np.zeros((h, w), dtype=bool)
    if not mask.any():
        return mask
    mask = ndi.binary_fill_holes(mask)
    if _px(cfg.closing, side) > 0:
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE,
                                _disk(_px(cfg.closing, side))).astype(bool)
        mask = ndi.binary_fill_holes(mask)
    return mask


def adjust_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate (``pixels`` > 0) or erode (< 0) a boolean mask with a disk of that radius."""
    mask = np.asarray(mask, dtype=bool)
    if pixels == 0:
        return mask.copy()
    op = cv2.dilate if pixels > 0 else cv2.erode
    return op(mask.astype(np.uint8), _disk(abs(int(pixels)))).astype(bool)


def attribution_share(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive attribution inside ``mask``: sum(a+ * mask) / sum(a+).

    Negative values (evidence against the target, in occlusion maps) are left out. NaN when
    the mask is empty or the map has no positive mass.
    """
    a = np.clip(np.asarray(attribution, dtype=np.float64), 0.0, None)
    mask = np.asarray(mask, dtype=bool)
    if a.shape != mask.shape:
        raise InputError(f"attribution {a.shape} and mask {mask.shape} differ in shape")
    total = a.sum()
    if not mask.any() or total <= 0:
        return float("nan")
    return float(a[mask].sum() / total)


def border_band(shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Boolean mask of the outer band ``round(fraction * min(H, W))`` pixels wide."""
    h, w = shape
    if not 0.0 <= fraction < 0.5:
        raise InputError(f"border band must be a fraction of the side in [0, 0.5), got {fraction}")
    b = int(round(fraction * min(h, w)))
    band = np.zeros((h, w), dtype=bool)
    if b > 0:
        band[:b] = band[-b:] = True
        band[:, :b] = band[:, -b:] = True
    return band
