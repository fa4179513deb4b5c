"""The embedded demo data set: a deterministic procedural generator of chest-X-ray-like images.

The demo set lets the whole pipeline run offline, in minutes, with no download. It is written
in the Kaggle layout with the real file-name scheme, so it goes through exactly the code path
of the real data (``kermany.parse_filename`` and ``prepare``)::

    <out_root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg

    NORMAL/IM-0417-0001.jpeg             first image of patient IM-0417
    NORMAL/IM-0417-0001-0001.jpeg        further images of the same patient
    NORMAL/NORMAL2-IM-1093-0001.jpeg     patient NORMAL2-IM-1093
    PNEUMONIA/person85_bacteria_412.jpeg patient person85_bacteria, image 412
    PNEUMONIA/person85_virus_160.jpeg    patient person85_virus (another patient)

Patients have 1-3 images and never cross splits. The class mix follows the real training
data (26 % normal, 49 % bacterial, 25 % viral pneumonia); the ``val`` folder holds normals and
bacterial pneumonia only, like the official 16-image val split.

What the images show (grayscale, bright = dense, a PA film: the patient's left is the image's
right): a dark background, the soft-tissue trunk with shoulders and neck, two radiolucent lung
fields with branching vascular markings, posterior and anterior ribs, clavicles, the spine
and trachea, the mediastinum, the heart shadow bulging to the image right, the diaphragm
domes and the abdomen below them. Each patient has its own anatomy; each image its own pose,
exposure, contrast, noise and blur.

- **bacterial** pneumonia: lobar consolidation, one (sometimes two) dense, fairly
  well-defined, mottled opacity filling part of one lung, with faint air bronchograms; or
  bronchopneumonia, small patchy opacities in the lower zones;
- **viral** pneumonia: diffuse bilateral interstitial pattern, reticular and streaky
  opacities radiating from both hila, with a perihilar haze, often with small patches of
  consolidation or atelectasis (so the subtypes overlap, as in real films);
- **normal**: clear lungs.

Severity is drawn per patient from a wide range that includes subtle cases, and nuisances
shared by every class (a burned-in "L"/"R" marker, ECG leads, raised arms, exposure and
gamma, heel-effect gradients) keep brightness from giving the label away. With a linear
classifier on downsampled pixels plus texture statistics the set is learnable but not
trivial (normal vs pneumonia AUROC about 0.9, bacterial vs viral about 0.8; see
``tests/test_demo.py``).

Everything random comes from ``numpy.random.default_rng`` streams keyed by ``seed`` and the
patient/image index, and OpenCV's JPEG encoder is deterministic, so the same parameters give
byte-identical files (with the same numpy and OpenCV versions).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Share of each subtype among the images of the train and test splits (real train split).
CLASS_MIX = {"normal": 0.26, "bacteria": 0.49, "virus": 0.25}
#: Images per patient: 1, 2 or 3 with these probabilities.
IMAGES_PER_PATIENT = ((1, 2, 3), (0.6, 0.25, 0.15))
#: Share of normal patients named NORMAL2-IM-XXXX (the rest are IM-XXXX).
NORMAL2_SHARE = 0.5
JPEG_QUALITY = 90
MIN_IMAGES = {"train": 3, "test": 3, "val": 2}
MIN_SIZE, MAX_SIZE = 64, 4096

#: Disease severity per patient ~ Beta(a, b): a wide range that includes subtle cases.
SEVERITY_BETA = (4.5, 1.5)
#: Opacity of a fully developed lesion, as a share of the lung's radiolucency.
CONSOLIDATION_GAIN = 1.3
INTERSTITIAL_GAIN = 1.4
#: Share of bacterial cases that are lobar (the rest: bronchopneumonia).
LOBAR_SHARE = 0.5
#: Share of viral cases with small patches of consolidation besides the interstitial pattern.
VIRUS_PATCH_SHARE = 0.6

#: Pose of the patient in the frame: rotation (degrees), scale, shift (fraction of the side).
POSE = {"rotate_deg": 6.0, "scale": (0.92, 1.10), "shift": 0.04}
#: Exposure: contrast gain, offset, heel-effect gradients (vertical, horizontal), gamma.
EXPOSURE = {"contrast": (0.85, 1.2), "offset": 0.08, "heel": (0.06, 0.04), "gamma": (0.75, 1.35)}

# Seed-stream tags: rng = default_rng([seed, TAG, index]).
_PLAN, _PATIENT, _IMAGE = 0, 1, 2


@dataclass(frozen=True)
class DemoImage:
    """One file of the demo set (its pixels are drawn from ``patient_uid`` and ``image_uid``)."""

    split: str
    label: str  # NORMAL | PNEUMONIA
    subtype: str  # normal | bacteria | virus
    patient: str  # IM-0417, NORMAL2-IM-1093, person85_bacteria, person85_virus
    file: str
    patient_uid: int
    image_uid: int

    @property
    def relpath(self) -> str:
        return f"{self.split}/{self.label}/{self.file}"


# --------------------------------------------------------------------------------------------
# Planning: which patients and files go where (no pixels yet)
# --------------------------------------------------------------------------------------------


def _split_counts(n: int, split: str) -> dict[str, int]:
    """Images per subtype in one split; every subtype present gets at least one image."""
    if split == "val":
        n_normal = n // 2
        return {"normal": n_normal, "bacteria": n - n_normal, "virus": 0}
    n_normal = max(1, round(n * CLASS_MIX["normal"]))
    n_virus = max(1, round(n * CLASS_MIX["virus"]))
    return {"normal": n_normal, "bacteria": n - n_normal - n_virus, "virus": n_virus}


def _patient_sizes(rng: np.random.Generator, n_images: int) -> list[int]:
    """Split ``n_images`` into patients of 1-3 images (the last patient is trimmed)."""
    sizes: list[int] = []
    values, probs = IMAGES_PER_PATIENT
    while sum(sizes) < n_images:
        sizes.append(min(int(rng.choice(values, p=probs)), n_images - sum(sizes)))
    return sizes


def plan_demo(n_train: int, n_test: int, n_val: int, seed: int) -> list[DemoImage]:
    """The files of the demo set: names, splits, classes and patients (deterministic)."""
    rng = np.random.default_rng([seed, _PLAN])
    # patient groups per (split, subtype), in a fixed order
    groups: list[tuple[str, str, int]] = []  # (split, subtype, n_images)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for subtype, count in _split_counts(n, split).items():
            groups += [(split, subtype, k) for k in _patient_sizes(rng, count)]

    # patient numbers: unique within a name space, in random order (the number says nothing
    # about the split); personN numbers repeat across subtypes, as in the real data
    n_by_sub = {s: sum(1 for g in groups if g[1] == s) for s in CLASS_MIX}
    normal2 = rng.random(n_by_sub["normal"]) < NORMAL2_SHARE
    pool = np.arange(100, 100 + max(1900, 3 * len(groups)))
    numbers = {
        "IM": iter(rng.choice(pool, int((~normal2).sum()), replace=False)),
        "NORMAL2": iter(rng.choice(pool, int(normal2.sum()), replace=False)),
        "bacteria": iter(rng.choice(pool - 99, n_by_sub["bacteria"], replace=False)),
        "virus": iter(rng.choice(pool - 99, n_by_sub["virus"], replace=False)),
    }
    image_counter = {"bacteria": int(rng.integers(1, 400)), "virus": int(rng.integers(1, 400))}

    images: list[DemoImage] = []
    i_normal = 0
    for patient_uid, (split, subtype, k) in enumerate(groups):
        if subtype == "normal":
            space = "NORMAL2" if normal2[i_normal] else "IM"
            i_normal += 1
            patient = f"{'NORMAL2-' if space == 'NORMAL2' else ''}IM-{next(numbers[space]):04d}"
            files = [f"{patient}-0001.jpeg"]  # then IM-XXXX-0001-0001, -0002, as in the real set
            files += [f"{patient}-0001-{j:04d}.jpeg" for j in range(1, k)]
            label = "NORMAL"
        else:
            person = int(next(numbers[subtype]))
            patient = f"person{person}_{subtype}"
            start = image_counter[subtype]
            image_counter[subtype] += k
            files = [f"{patient}_{m}.jpeg" for m in range(start, start + k)]
            label = "PNEUMONIA"
        for file in files:
            images.append(DemoImage(split, label, subtype, patient, file, patient_uid, len(images)))
    return images


# --------------------------------------------------------------------------------------------
# Drawing helpers (coordinates are fractions of the image side; drawing is 1/16-pixel exact)
# --------------------------------------------------------------------------------------------

_SHIFT = 4


def _px(xy, size: int) -> np.ndarray:
    return np.round(np.asarray(xy, dtype=np.float64) * size * (1 << _SHIFT)).astype(np.int32)


def _fill(size: int, polys) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [_px(p, size).reshape(-1, 1, 2) for p in polys], 255, cv2.LINE_AA, _SHIFT)
    return m.astype(np.float32) / 255.0


def _lines(size: int, curves: np.ndarray | list, thickness: float, value: float = 1.0,
           out: np.ndarray | None = None) -> np.ndarray:
    """Polylines of ``value`` drawn into ``out`` (a new float32 map by default).

    ``curves`` is a list of (K, 2) arrays or one (N, K, 2) array. Drawn without
    anti-aliasing (five times faster); callers blur the map by at least half a pixel, see
    :func:`_blur`.
    """
    m = np.zeros((size, size), np.float32) if out is None else out
    t = max(1, int(round(thickness * size)))
    pts = _px(curves, size) if isinstance(curves, np.ndarray) else [_px(c, size) for c in curves]
    cv2.polylines(m, list(pts), False, float(value), t, cv2.LINE_8, _SHIFT)
    return m


def _ellipses(size: int, items) -> np.ndarray:
    """Filled ellipses; items are (cx, cy, ax, ay, angle_degrees)."""
    m = np.zeros((size, size), np.uint8)
    for cx, cy, ax, ay, angle in items:
        c = tuple(int(v) for v in _px((cx, cy), size))
        a = tuple(max(1, int(v)) for v in _px((ax, ay), size))
        cv2.ellipse(m, c, a, float(angle), 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    return m.astype(np.float32) / 255.0


def _blur(a: np.ndarray, sigma: float, min_px: float = 0.0) -> np.ndarray:
    """Gaussian blur, ``sigma`` a fraction of the image side but at least ``min_px`` pixels;
    wide blurs run on a smaller copy."""
    size = a.shape[0]
    s = max(sigma * size, min_px)
    if s < 0.3:
        return a
    if s <= 4:
        return cv2.GaussianBlur(a, (0, 0), s)
    small = max(8, int(round(size * 2.0 / s)))
    b = cv2.GaussianBlur(cv2.resize(a, (small, small), interpolation=cv2.INTER_AREA), (0, 0), 2.0)
    return cv2.resize(b, (size, size), interpolation=cv2.INTER_LINEAR)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    c.setflags(write=False)  # cached: shared by every image of this size
    return c[None, :], c[:, None]  # x (1, S), y (S, 1)


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Zero-mean noise correlated over about ``scale`` (fraction of the side).

    Drawn with unit std on a coarse grid and upsampled (cheap); ``scale`` below a pixel gives
    white noise.
    """
    n_coarse = int(np.clip(round(1.0 / max(scale, 1e-6)), 4, size))
    n = rng.standard_normal((n_coarse, n_coarse), dtype=np.float32)
    n = (n - n.mean()) / (n.std() + 1e-6)
    return cv2.resize(n, (size, size), interpolation=cv2.INTER_CUBIC) if n_coarse < size else n


def _soft_ellipse(size: int, cx: float, cy: float, ax: float, ay: float, edge: float) -> np.ndarray:
    """A filled ellipse whose border ramps from 0 to 1 over ``edge`` (fraction of the side)."""
    x, y = _grid(size)
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return np.clip((1.0 - r) * min(ax, ay) / edge + 0.5, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


@dataclass
class _Anatomy:
    body_w: float  # trunk half width
    top: float  # lung apex level
    bot: tuple[float, float]  # costophrenic level, image-left / image-right lung
    med: float  # lung medial border, distance from the midline
    lat: float  # lung lateral border, distance from the midline
    dome: tuple[float, float]  # diaphragm dome heights
    heart: tuple[float, float, float, float]  # shift right of the midline, axes, tilt (deg)
    rib_thick: float
    rib_drop: float  # how steeply posterior ribs fall laterally
    n_ribs: int
    tissue: float
    abdomen: float
    depth: float  # lung radiolucency
    bone: float
    vessels: float
    arms: int  # 0 down, 1 raised
    seed: int  # fixed details (vessel tree)


def _anatomy(rng: np.random.Generator) -> _Anatomy:
    top = rng.uniform(0.09, 0.16)
    bot_r = rng.uniform(0.74, 0.84)
    body_w = rng.uniform(0.44, 0.54)
    med = rng.uniform(0.05, 0.075)
    return _Anatomy(
        body_w=body_w,
        top=top,
        bot=(bot_r, bot_r + rng.uniform(0.0, 0.035)),  # the right dome sits higher
        med=med,
        lat=body_w - rng.uniform(0.05, 0.08),
        dome=(rng.uniform(0.05, 0.09), rng.uniform(0.05, 0.09)),
        heart=(rng.uniform(0.06, 0.095), rng.uniform(0.15, 0.20), rng.uniform(0.11, 0.14),
               rng.uniform(-35, -15)),
        rib_thick=rng.uniform(0.017, 0.024),
        rib_drop=rng.uniform(0.09, 0.15),
        n_ribs=int(rng.integers(9, 11)),
        tissue=rng.uniform(0.56, 0.68),
        abdomen=rng.uniform(0.03, 0.09),
        depth=rng.uniform(0.30, 0.42),
        bone=rng.uniform(0.12, 0.18),
        vessels=rng.uniform(0.05, 0.10),
        arms=int(rng.random() < 0.35),
        seed=int(rng.integers(2**31)),
    )


def _side_x(side: int, d):
    return 0.5 + side * d


def _diaphragm(an: _Anatomy, size: int) -> np.ndarray:
    """Diaphragm level per column (shape (1, S)): the higher of the two domes."""
    x, _ = _grid(size)
    levels = []
    for i, side in enumerate((-1, 1)):
        mid = an.med + 0.5 * (an.lat - an.med)
        k = an.dome[i] / (an.lat - mid) ** 2
        levels.append(an.bot[i] - an.dome[i] + k * (x - _side_x(side, mid)) ** 2)
    return np.minimum(levels[0], levels[1])


def _lung_outline(an: _Anatomy, side: int, i: int) -> np.ndarray:
    """Closed outline of one lung: rounded apex, convex lateral border, straight medial one.

    It reaches below the diaphragm; the domes cut it.
    """
    bot = an.bot[i] + 0.06
    apex = an.med + 0.4 * (an.lat - an.med)
    t = np.linspace(0.0, 1.0, 40)
    y = an.top + t * (bot - an.top)
    lateral = apex + (an.lat - apex) * np.sqrt(np.minimum(t / 0.6, 1.0)) * (1 - 0.04 * t)
    medial = apex - (apex - an.med) * np.sqrt(np.minimum(t / 0.3, 1.0))
    return np.concatenate([np.stack([_side_x(side, lateral), y], 1),
                           np.stack([_side_x(side, medial), y], 1)[::-1]], 0)


def _vessels(rng: np.random.Generator, size: int, hila, n: int = 18) -> np.ndarray:
    """Branching bronchovascular markings radiating from the hila (a line map, about 0..1)."""
    trees = []
    for side, (hx, hy) in zip((-1, 1), hila):
        ang = rng.uniform(-1.3, 1.3, n) + (0.0 if side > 0 else np.pi)
        length = rng.uniform(0.12, 0.32, n)
        steps = rng.normal(0, 0.12, (n, 9)) + np.repeat(rng.normal(0, 0.25, (n, 3)), 3, axis=1)
        a = ang[:, None] + np.cumsum(steps, axis=1)
        d = (length / 9)[:, None]
        xy = np.stack([np.cumsum(d * np.cos(a), 1), np.cumsum(d * np.sin(a), 1)], -1)
        xy = np.concatenate([np.zeros((n, 1, 2)), xy], 1) + np.array([hx, hy])
        trees.append(xy)
    xy = np.concatenate(trees, 0)  # (2n, 10, 2): three generations of three steps each
    out = np.zeros((size, size), np.float32)
    for level, width in enumerate((0.009, 0.006, 0.0035)):
        _lines(size, xy[:, 3 * level:3 * level + 4], width, 1.0 - 0.25 * level, out)
    return _blur(out, 0.003, 0.5)


def _ribs(an: _Anatomy, size: int, phase: float, tilt: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior (with bright cortical rims) and anterior (faint) rib maps.

    A posterior rib leaves the spine, rises a little and arches down along the lateral chest
    wall; an anterior rib runs from the lateral end of the posterior one down towards the
    sternum.
    """
    spacing = (max(an.bot) - an.top) / (an.n_ribs - 1.0)
    k = np.arange(an.n_ribs)[:, None, None]
    side = np.array([-1.0, 1.0])[None, :, None]
    u = np.linspace(0.0, 1.0, 14)[None, None, :]
    v0 = an.top - 0.05 + (k + phase) * spacing
    drop = an.rib_drop * (0.8 + 0.4 * k / an.n_ribs)
    px = 0.5 + side * (0.02 + (an.lat + 0.01) * u)
    py = v0 - 0.14 * u * (1 - u) + drop * u ** 3 + side * tilt * u
    post = np.stack(np.broadcast_arrays(px, py), -1).reshape(-1, u.size, 2)
    ta = np.linspace(0.0, 1.0, 8)[None, None, :]
    ax_ = 0.5 + side * (an.lat - ta * (an.lat - an.med - 0.02))
    ay_ = py[..., -2:-1] + 0.10 * ta ** 1.2
    ant = np.stack(np.broadcast_arrays(ax_, ay_), -1).reshape(-1, ta.size, 2)
    # cortical rims: a rib's edges are brighter than its middle
    rim = _lines(size, post, an.rib_thick * 0.45, 0.45, _lines(size, post, an.rib_thick))
    return _blur(rim, 0.0025, 0.5), _blur(_lines(size, ant, an.rib_thick * 0.9), 0.006, 0.5)


# --------------------------------------------------------------------------------------------
# Disease
# --------------------------------------------------------------------------------------------


@dataclass
class _Disease:
    """A patient's pneumonia: consolidations and/or an interstitial pattern, with weights."""

    subtype: str
    severity: float = 0.0
    lesions: list = field(default_factory=list)  # consolidations (dense, local)
    consolidation: float = 0.0  # weight of the consolidations
    interstitial: dict | None = None  # bilateral perihilar pattern
    interstitial_w: float = 0.0


def _lesion(rng: np.random.Generator, side: int, scale: float, zone: tuple[float, float],
            blobs: tuple[int, int]) -> dict:
    return dict(
        side=side,
        zone=rng.uniform(*zone),  # lung height fraction
        across=rng.uniform(0.3, 0.8),  # medial -> lateral fraction
        scale=scale,
        blobs=int(rng.integers(*blobs)),
        seed=int(rng.integers(2**31)),  # the same lesion in every image of a patient
    )


def _interstitial_params(rng: np.random.Generator) -> dict:
    return dict(
        spread=(rng.uniform(0.09, 0.16), rng.uniform(0.14, 0.24)),
        balance=(rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)),
        streaks=int(rng.integers(20, 40)),
        texture=rng.uniform(0.35, 1.0),  # reticular/streaky share against the haze
        seed=int(rng.integers(2**31)),
    )


def _disease(rng: np.random.Generator, subtype: str) -> _Disease:
    """Per-patient disease: pattern, place and strength (a patient's images vary around it).

    The patterns overlap as they do in children: a share :data:`LOBAR_SHARE` of bacterial
    cases is lobar (one or two dense, well-defined consolidations), the rest bronchopneumonia
    (small patchy opacities in the lower zones, sometimes in both lungs, with some
    peribronchial streaking); viral cases are a bilateral perihilar interstitial pattern, a
    share :data:`VIRUS_PATCH_SHARE` of them with small patches of consolidation/atelectasis.
    """
    if subtype == "normal":
        return _Disease(subtype)
    severity = float(np.clip(rng.beta(*SEVERITY_BETA), 0.02, 1.0))
    side = -1 if rng.random() < 0.6 else 1  # the right lung (image left) more often
    if subtype == "bacteria":
        if rng.random() < LOBAR_SHARE:
            n = 1 if rng.random() < 0.7 else 2
            lesions = [_lesion(rng, side if (j == 0 or rng.random() < 0.5) else -side,
                               rng.uniform(0.7, 1.5) * (1.0 if j == 0 else 0.7), (0.2, 0.9), (3, 7))
                       for j in range(n)]
            return _Disease(subtype, severity, lesions, 1.0)
        both = rng.random() < 0.5
        lesions = [_lesion(rng, side if (not both or rng.random() < 0.5) else -side,
                           rng.uniform(0.3, 0.6), (0.45, 0.95), (1, 4))
                   for _ in range(int(rng.integers(4, 8)))]
        return _Disease(subtype, severity, lesions, 0.75, _interstitial_params(rng), 0.5)
    lesions = []
    if rng.random() < VIRUS_PATCH_SHARE:
        lesions = [_lesion(rng, side if rng.random() < 0.5 else -side, rng.uniform(0.35, 0.7),
                           (0.3, 0.95), (1, 4)) for _ in range(int(rng.integers(1, 3)))]
    return _Disease(subtype, severity, lesions, 0.7, _interstitial_params(rng),
                    rng.uniform(0.4, 1.0))


def _consolidation(an: _Anatomy, lesions: list, lung: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Consolidations: dense, fairly well-defined, mottled, bounded by the pleura."""
    size = lung.shape[0]
    items, bronchi = [], []
    for les in lesions:
        lrng = np.random.default_rng(les["seed"])
        i = 0 if les["side"] < 0 else 1
        cx = _side_x(les["side"], an.med + les["across"] * (an.lat - an.med) * 0.95)
        cy = an.top + les["zone"] * (an.bot[i] - an.top)
        sc = les["scale"]
        items += [(cx + lrng.normal(0, 0.04 * sc), cy + lrng.normal(0, 0.05 * sc),
                   lrng.uniform(0.05, 0.11) * sc, lrng.uniform(0.06, 0.13) * sc,
                   lrng.uniform(0, 180)) for _ in range(les["blobs"])]
        # faint air bronchograms: dark branching lines inside the dense lesion
        bronchi += [np.array([[cx + lrng.normal(0, 0.01), cy - 0.05 * sc],
                              [cx + lrng.normal(0, 0.03), cy + lrng.uniform(0.03, 0.07) * sc]])
                    for _ in range(3)]
    blob = _blur(_ellipses(size, items), rng.uniform(0.006, 0.016))
    mrng = np.random.default_rng(lesions[0]["seed"])
    mottle = 0.85 + 0.075 * np.clip(_smooth_noise(mrng, size, 0.02), -2, 2)
    air = 1.0 - 0.3 * _blur(_lines(size, bronchi, 0.005), 0.003, 0.5)
    return blob * mottle * air * lung


def _interstitial(params: dict, lung: np.ndarray, hila, rng: np.random.Generator) -> np.ndarray:
    """Viral pattern: bilateral reticular and streaky opacities radiating from the hila."""
    size = lung.shape[0]
    prng = np.random.default_rng(params["seed"])
    x, y = _grid(size)
    fine = _smooth_noise(rng, size, 0.012) - 0.7 * _smooth_noise(rng, size, 0.03)
    reticular = np.clip(fine, 0, 3) / 1.5  # a lacy network
    n = params["streaks"]
    curves = []
    for side, (hx, hy) in zip((-1, 1), hila):
        ang = prng.uniform(-1.4, 1.4, n) + (0.0 if side > 0 else np.pi) + rng.normal(0, 0.03, n)
        r = np.stack([prng.uniform(0.01, 0.08, n), prng.uniform(0.08, 0.17, n),
                      prng.uniform(0.17, 0.27, n)], 1)
        a = ang[:, None] + prng.normal(0, 0.08, (n, 3)).cumsum(1)
        curves.append(np.stack([hx + r * np.cos(a), hy + r * np.sin(a)], -1))
    streaks = _blur(_lines(size, np.concatenate(curves, 0), 0.006), 0.004, 0.5)
    # perihilar weight, separable in x and y, one Gaussian per lung
    sx, sy = params["spread"]
    w = sum(b * (np.exp(-(x - hx) ** 2 / (2 * sx ** 2)) * ((x < 0.5) == (i == 0)))
            * np.exp(-(y - hy) ** 2 / (2 * sy ** 2))
            for i, (b, (hx, hy)) in enumerate(zip(params["balance"], hila)))
    texture = params["texture"] * (0.45 * reticular + 0.5 * streaks)
    return (texture + 0.3) * w * lung  # 0.3: a perihilar haze


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


def render_chest_xray(size: int, subtype: str, patient_rng: np.random.Generator,
                      image_rng: np.random.Generator) -> np.ndarray:
    """Draw one chest-X-ray-like image (uint8, ``size`` x ``size``), bright = dense.

    ``patient_rng`` fixes the anatomy and the disease (shared by a patient's images: pass a
    fresh generator with the same seed for each image), ``image_rng`` the pose, exposure,
    noise, nuisances and the image-to-image change of the disease.
    """
    if subtype not in CLASS_MIX:
        raise InputError(f"subtype must be one of {tuple(CLASS_MIX)}, not {subtype!r}")
    an = _anatomy(patient_rng)
    dz = _disease(patient_rng, subtype)
    rng = image_rng
    S = size
    x, y = _grid(S)
    fixed = np.random.default_rng(an.seed)

    # --- smooth parts, drawn on a coarse grid: body, abdomen, gastric bubble, aeration ------
    n = min(S, 64)
    xc, yc = _grid(n)
    trunk = _soft_ellipse(n, 0.5, 0.62, an.body_w, 0.64, 0.05)
    body = np.maximum(trunk, _soft_ellipse(n, 0.5, an.top + 0.12, an.body_w + 0.04, 0.2, 0.05))
    body = np.maximum(body, _soft_ellipse(n, 0.5, 0.0, 0.09, 0.25, 0.03))  # neck
    if an.arms:  # raised arms beside the head
        arms = _ellipses(n, [(_side_x(s, an.body_w + 0.01), 0.08, 0.055, 0.2, s * 25)
                             for s in (-1, 1)])
        body = np.maximum(body, _blur(arms, 0.015))
    thick = 0.8 + 0.2 * np.exp(-((xc - 0.5) / (an.body_w * 0.8)) ** 2)
    dome_mid = an.med + 0.5 * (an.lat - an.med)
    gastric = _soft_ellipse(n, _side_x(1, dome_mid), an.bot[1] - an.dome[1] + 0.05,
                            0.06, 0.03, 0.015)
    zone = 0.8 + 0.2 * np.sin(np.pi * np.clip((yc - an.top) / (max(an.bot) - an.top), 0, 1))
    zone = zone * (1.0 + 0.08 * _smooth_noise(fixed, n, 0.12))  # uneven aeration and overlap
    hila = [(_side_x(s, an.med + 0.05), an.top + 0.42 * (an.bot[i] - an.top))
            for i, s in enumerate((-1, 1))]
    hilar = sum(_soft_ellipse(n, hx, hy, 0.045, 0.07, 0.04) for hx, hy in hila)
    coarse = np.stack([0.05 + an.tissue * body * thick,
                       an.abdomen * trunk - 0.12 * fixed.uniform(0.3, 1.0) * gastric,
                       an.depth * zone - 0.1 * hilar,
                       trunk], -1).astype(np.float32)
    if n < S:
        coarse = cv2.resize(coarse, (S, S), interpolation=cv2.INTER_LINEAR)
    tissue, abdomen, lucency, trunk = (coarse[..., i] for i in range(4))

    # --- diaphragm, heart and lungs (sharp borders, full resolution) ---------------------------
    diaph = _diaphragm(an, S)
    below = np.clip((y - diaph) / 0.008 + 0.5, 0, 1).astype(np.float32)
    dx, ax, ay, angle = an.heart
    cy = an.bot[0] - 0.5 * an.dome[0] - 0.75 * ay  # the heart sits on the diaphragm
    heart = _blur(_ellipses(S, [(0.5 + dx, cy, ax, ay, angle),  # left ventricle
                                (0.5 - 0.01, cy + 0.01, ax * 0.5, ay * 0.9, 0),  # right atrium
                                (0.5 + an.med - 0.01, cy - ay - 0.08, 0.03, 0.028, 0)]),  # aorta
                  0.005)
    outline = _fill(S, [_lung_outline(an, side, i) for i, side in enumerate((-1, 1))])
    lung = _blur(outline * (1.0 - below), 0.005) * (1.0 - heart)
    img = tissue + abdomen * below - lucency * lung + 0.04 * heart
    img += an.vessels * _vessels(fixed, S, hila) * np.clip(lung * 1.5, 0, 1)

    # --- spine and trachea ---------------------------------------------------------------------
    spine = np.exp(-((x - 0.5) / 0.03) ** 4)
    discs = 0.7 + 0.3 * np.cos(2 * np.pi * (y - an.top) / ((max(an.bot) - an.top) / 8.5))
    img += 0.06 * (spine * discs) * trunk
    trachea = _blur(_lines(S, [np.array([(0.5, -0.05), (0.5, an.top + 0.08),
                                         (0.505, hila[0][1] - 0.07)])], 0.022), 0.005, 0.5)
    img -= 0.08 * trachea

    # --- bones ---------------------------------------------------------------------------------
    post, ant = _ribs(an, S, rng.uniform(-0.15, 0.15), rng.normal(0, 0.01))
    thorax = trunk * np.clip((diaph + 0.06 - y) / 0.03, 0, 1)
    img += an.bone * (post * (0.4 + 0.6 * np.clip(lung, 0, 1)) + 0.35 * ant * lung) * thorax
    t = np.linspace(0, 1, 16)[:, None]
    clav = [np.concatenate([_side_x(s, 0.045 + t * (an.lat * 0.85)),
                            an.top + 0.04 - 0.1 * t ** 0.7 + 0.02 * np.sin(np.pi * t)], 1)
            for s in (-1, 1)]
    img += 0.9 * an.bone * _blur(_lines(S, clav, 0.02), 0.004, 0.5)

    # --- disease ---------------------------------------------------------------------------------
    if subtype != "normal":
        sev = an.depth * float(np.clip(dz.severity * rng.lognormal(0, 0.15), 0.02, 1.0))
        if dz.lesions:
            img += (CONSOLIDATION_GAIN * dz.consolidation * sev
                    * _consolidation(an, dz.lesions, lung, rng))
        if dz.interstitial is not None:
            img += (INTERSTITIAL_GAIN * dz.interstitial_w * sev
                    * _interstitial(dz.interstitial, lung, hila, rng))

    # --- pose: rotation, scale, shift ------------------------------------------------------------
    m = cv2.getRotationMatrix2D((S / 2, S / 2), rng.uniform(-1, 1) * POSE["rotate_deg"],
                                rng.uniform(*POSE["scale"]))
    m[:, 2] += rng.uniform(-1, 1, 2) * POSE["shift"] * S
    img = cv2.warpAffine(img.astype(np.float32), m, (S, S), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)

    # --- exposure: contrast, brightness, heel effect, gamma --------------------------------------
    img = img * rng.uniform(*EXPOSURE["contrast"]) + rng.uniform(-1, 1) * EXPOSURE["offset"]
    heel_y, heel_x = EXPOSURE["heel"]
    img += rng.uniform(-1, 1) * heel_y * (y - 0.5) + rng.uniform(-1, 1) * heel_x * (x - 0.5)
    img = cv2.pow(np.clip(img, 0, 1), rng.uniform(*EXPOSURE["gamma"]))

    # --- burned-in nuisances shared by every class -----------------------------------------------
    if rng.random() < 0.25:  # ECG leads and electrodes
        leads = rng.uniform(0.1, 0.9, (int(rng.integers(1, 3)), 3, 2))
        leads[:, 0, 1] = rng.uniform(0.0, 0.15, len(leads))
        wires = np.maximum(_lines(S, leads, 0.005), _ellipses(
            S, [(p[-1, 0], p[-1, 1], 0.016, 0.016, 0) for p in leads]))
        img = np.maximum(img, wires * rng.uniform(0.8, 0.95))
    img = _blur(img, rng.uniform(0.0012, 0.005))
    # the laterality marker: mostly "R" in the top left corner, as on most real films
    letter = "R" if rng.random() < 0.75 else "L"
    scale, stroke = rng.uniform(0.5, 0.9) * S / 256, max(1, int(round(2 * S / 256)))
    (tw, th), _ = cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, scale, stroke)
    corner = int(rng.integers(4)) if rng.random() < 0.3 else 0
    mx, my = rng.uniform(0.02, 0.08, 2) * S
    org = (int(mx if corner in (0, 2) else S - mx - tw),
           int(my + th if corner in (0, 1) else S - my))
    mark = np.zeros((S, S), np.uint8)
    cv2.putText(mark, letter, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, stroke, cv2.LINE_AA)
    img = np.maximum(img, mark.astype(np.float32) / 255 * rng.uniform(0.85, 1.0))

    # --- detector noise: quantum mottle plus a finer grain ---------------------------------------
    img += rng.uniform(0.008, 0.025) * _smooth_noise(rng, S, 0.008)
    grain = rng.random((S, S), dtype=np.float32) - 0.5  # uniform: 4x faster than normal
    img += rng.uniform(0.004, 0.012) * np.sqrt(12.0) * grain
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------


def _check_args(n_train: int, n_test: int, n_val: int, size: int, seed: int) -> None:
    for name, value in (("n_train", n_train), ("n_test", n_test), ("n_val", n_val)):
        split = name[2:]
        if not isinstance(value, (int, np.integer)) or value < MIN_IMAGES[split]:
            raise InputError(
                f"demo.{name} must be an integer >= {MIN_IMAGES[split]} (every class needs an "
                f"image), got {value!r}; fix it in params.yaml"
            )
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InputError(f"demo.size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"demo.seed must be a non-negative integer, got {seed!r}")


def render_demo_image(item: DemoImage, size: int, seed: int) -> np.ndarray:
    """The pixels of one planned file (uint8, ``size`` x ``size``)."""
    return render_chest_xray(
        size, item.subtype,
        np.random.default_rng([seed, _PATIENT, item.patient_uid]),
        np.random.default_rng([seed, _IMAGE, item.image_uid]),
    )


def summarize(images: list[DemoImage]) -> dict:
    """Counts per split: images, classes, subtypes and patients."""
    out: dict[str, dict] = {}
    for split in SPLITS:
        items = [it for it in images if it.split == split]
        per_patient = Counter(it.patient for it in items)
        labels = Counter(it.label for it in items)
        subtypes = Counter(it.subtype for it in items)
        out[split] = {
            "images": len(items),
            "patients": len(per_patient),
            "patients_multi_image": sum(1 for n in per_patient.values() if n > 1),
            **{key: labels[key] for key in ("NORMAL", "PNEUMONIA")},
            **{key: subtypes[key] for key in CLASS_MIX},
        }
    return out


def generate_demo(out_root: str | Path, *, n_train: int, n_test: int, n_val: int, size: int,
                  seed: int, progress: bool = True) -> dict:
    """Write the demo data set to ``out_root`` in the Kaggle layout and return a summary.

    Args:
        out_root: folder to create (or an empty one); gets ``{train,val,test}/{NORMAL,PNEUMONIA}``.
        n_train, n_test, n_val: images per split (the class mix of :data:`CLASS_MIX`;
            ``val`` holds half normal, half bacterial pneumonia).
        size: side of the square images in pixels.
        seed: the same seed and counts give byte-identical files.
        progress: show a tqdm progress bar.

    Returns:
        ``{"root", "size", "seed", "n_images", "splits": {split: {images, patients,
        patients_multi_image, NORMAL, PNEUMONIA, normal, bacteria, virus}}}``.
    """
    _check_args(n_train, n_test, n_val, size, seed)
    root = Path(out_root)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root}: exists and is not a folder; choose another demo output path")
    if root.is_dir() and any(root.iterdir()):
        raise InputError(
            f"{root}: folder is not empty; delete it (or choose an empty folder) so that no "
            "stale images mix with the new demo set"
        )
    images = plan_demo(int(n_train), int(n_test), int(n_val), int(seed))
    for split in SPLITS:
        for label in ("NORMAL", "PNEUMONIA"):
            (root / split / label).mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    for item in tqdm(images, desc="demo images", unit="img", disable=not progress):
        pixels = render_demo_image(item, int(size), int(seed))
        ok, buf = cv2.imencode(".jpeg", pixels, params)
        if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
            raise RuntimeError(f"OpenCV could not encode {item.relpath} as JPEG")
        (root / item.relpath).write_bytes(buf.tobytes())
    summary = {"root": str(root), "size": int(size), "seed": int(seed), "n_images": len(images),
               "splits": summarize(images)}
    log.info("wrote %d synthetic demo images (%d px, seed %d) to %s", len(images), size, seed, root)
    for split, c in summary["splits"].items():
        log.info("demo %s: %d images (%d normal, %d bacteria, %d virus) from %d patients",
                 split, c["images"], c["normal"], c["bacteria"], c["virus"], c["patients"])
    return summary


# --------------------------------------------------------------------------------------------
# A second synthetic site (an external test set for the demo)
# --------------------------------------------------------------------------------------------


def site_transform(img: np.ndarray, rng: np.random.Generator, *, contrast: float, gamma: float,
                   noise: float, zoom: float) -> np.ndarray:
    """Another acquisition of the same kind of image: contrast and gamma (another detector and
    exposure), zoom (another field of view and geometry), added noise and blur (another
    detector). ``contrast`` scales around mid-grey; ``zoom`` > 1 crops in, < 1 shows more
    border; ``noise`` is the added Gaussian noise's standard deviation (share of the range)."""
    s = img.shape[0]
    x = img.astype(np.float32) / 255.0
    x = np.clip((x - 0.5) * contrast + 0.5, 0.0, 1.0) ** gamma
    m = cv2.getRotationMatrix2D((s / 2, s / 2), 0.0, zoom)
    x = cv2.warpAffine(x, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=0.0)
    x = cv2.GaussianBlur(x, (0, 0), 0.6)
    x = x + noise * rng.standard_normal(x.shape).astype(np.float32)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def generate_demo_site(out_root: str | Path, *, n_images: int, size: int, seed: int,
                       contrast: float, gamma: float, noise: float, zoom: float,
                       progress: bool = False) -> dict:
    """Write a synthetic external test set: ``NORMAL/`` and ``PNEUMONIA/`` folders of new
    patients (generator ``seed``), each image passed through :func:`site_transform`.

    The class mix and the Kermany-style names (subtype and patient in the name) are the demo
    set's, so the set has subtypes and patient ids like the real external shift check.
    """
    _check_args(20, n_images, 4, size, seed)
    root = Path(out_root)
    if root.is_dir() and any(root.iterdir()):
        raise InputError(f"{root}: folder is not empty; delete it so that no stale images mix "
                         "with the new site")
    items = [it for it in plan_demo(20, int(n_images), 4, int(seed)) if it.split == "test"]
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    for item in tqdm(items, desc="demo site", unit="img", disable=not progress):
        pixels = render_demo_image(item, int(size), int(seed))
        rng = np.random.default_rng([seed, _IMAGE + 10, item.image_uid])
        pixels = site_transform(pixels, rng, contrast=contrast, gamma=gamma, noise=noise,
                                zoom=zoom)
        ok, buf = cv2.imencode(".jpeg", pixels, params)
        if not ok:  # pragma: no cover
            raise RuntimeError(f"OpenCV could not encode {item.file} as JPEG")
        (root / item.label / item.file).write_bytes(buf.tobytes())
    counts = Counter(it.subtype for it in items)
    log.info("wrote %d images of a synthetic second site (seed %d: contrast %.2f, gamma %.2f, "
             "noise %.3f, zoom %.2f) to %s: %s", len(items), seed, contrast, gamma, noise, zoom,
             root, dict(counts))
    return {"root": str(root), "n_images": len(items), "seed": int(seed),
            "subtypes": dict(counts)}
