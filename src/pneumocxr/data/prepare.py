"""The ``prepare`` step: raw images -> the prepared arrays every later stage reads, plus reports.

:func:`prepare` runs, in order:

1. list the candidates: the Kaggle-layout folder (``kermany`` and ``demo``; names parsed by
   :func:`pneumocxr.data.kermany.parse_filename`) or a PneumoniaMNIST-style npz (``medmnist``);
2. decode and preprocess every image in a thread pool (``threads``; PIL and OpenCV release the
   GIL), writing each result into its pre-assigned row, so the output is the same whatever
   the number of threads; bad files become rows of ``rejected.csv`` and the run goes on;
3. carve ``val`` out of the official train split, grouped by patient (and identical image) and
   stratified by class/subtype (:mod:`pneumocxr.data.splits`); the official test folder is
   ``test``, the official val folder ``val_official``;
4. write ``<out_dir>/<variant>/<split>.npy`` (memory-mappable), ``metadata.csv`` and
   ``info.json`` (format: :mod:`pneumocxr.data.arrays`), and the reports ``summary.json``,
   ``rejected.csv``, ``overview.png`` in ``report_dir``.

Rows keep a deterministic order: by official split, class folder and file name (npz: index).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..config import complete
from ..errors import InputError, MissingInputError
from . import kermany, medmnist
from .arrays import METADATA_COLUMNS, SPLITS
from .images import REJECT_KINDS, BadImageError, DecodedImage, pil_pixel_limit, read_image
from .preprocess import VARIANTS, PreprocessConfig, make_variants, preprocess
from .splits import (carve_validation, duplicate_groups, link_groups, max_proportion_gap,
                     patient_overlap, proportions, split_counts)

log = logging.getLogger(__name__)

SOURCES = ("kermany", "medmnist", "demo")
REPORT_FILES = {"summary": "summary.json", "rejected": "rejected.csv", "overview": "overview.png"}
LABELS = ("NORMAL", "PNEUMONIA")
SUBTYPES = ("normal", "bacteria", "virus")
OFFICIAL_TO_SPLIT = {"test": "test", "val": "val_official"}   # train -> train / val (carved)
N_EXAMPLES = 2   # example images per class in overview.png
_SCRATCH = ".prepare-scratch"


@dataclass
class Candidate:
    """One image to prepare; ``load`` decodes it (or raises :class:`BadImageError`)."""

    file: str
    official_split: str
    label: str
    subtype: str
    patient: str
    load: Callable[[], DecodedImage]


def prepare(
    source: str,
    root: str | Path,
    out_dir: str | Path,
    report_dir: str | Path,
    *,
    prepare_params: Mapping[str, Any] | None = None,
    split_seed: int,
    val_fraction: float,
    min_side: int,
    max_pixels: int,
    threads: int = 1,
    progress: bool = False,
) -> dict:
    """Prepare ``source`` data under ``root`` into ``out_dir``; reports go to ``report_dir``.

    Args:
        source: ``kermany`` or ``demo`` (a Kaggle-layout folder) or ``medmnist`` (an npz).
        root: the folder (or npz file) of params ``data.root``.
        out_dir: the prepared-data folder (``data/processed``).
        report_dir: folder for ``summary.json``, ``rejected.csv``, ``overview.png``.
        prepare_params: params ``prepare`` (resize, crop, variants, clahe); the schema fills
            in what is not given.
        val_fraction: share of train patients carved out as ``val``.
        split_seed: seeds the validation carving and the choice of example images.
        min_side, max_pixels: images with a shorter side under ``min_side`` or more than
            ``max_pixels`` pixels are rejected.
        threads: images decoded in parallel.
        progress: show a tqdm progress bar.

    Returns:
        The summary (also written to ``report_dir/summary.json``).

    Raises:
        FileNotFoundError: ``root`` is missing (names the layout and where the data comes from).
        ValueError: bad arguments, wrong layout, or a split/class with no usable image.
    """
    if source not in SOURCES:
        raise InputError(f"data.source must be one of {SOURCES}, not {source!r}")
    prep = complete("prepare", prepare_params or {})
    variants = list(prep["variants"])
    cfg = PreprocessConfig.from_params(prep)
    seed = split_seed
    if threads < 1:
        raise InputError(f"threads must be positive, got {threads}")
    root, out_dir, report_dir = Path(root), Path(out_dir), Path(report_dir)
    params = {
        "resize": cfg.resize, "crop": cfg.crop, "variants": variants,
        "clahe": {"clip_limit": cfg.clip_limit, "tile_grid": cfg.tile_grid},
        "val_fraction": val_fraction, "split_seed": seed, "min_side": min_side,
        "max_pixels": max_pixels, "threads": threads,
    }
    log.info("prepare %s data from %s -> %s (%s)", source, root, out_dir, params)

    started = time.perf_counter()
    if source == "medmnist":
        candidates, rejected, official = _medmnist_candidates(root, min_side, max_pixels)
    else:
        candidates, rejected, official = _folder_candidates(root, source, min_side, max_pixels)

    out_dir.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    with pil_pixel_limit(max_pixels):
        meta, rejected, n_candidates = _prepare_arrays(
            candidates, rejected, official, cfg, variants, out_dir, report_dir, root, source,
            val_fraction, seed, threads, progress)
        elapsed = time.perf_counter() - started
        has_subtypes = bool((meta["subtype"] != "unknown").all())
        _overview(meta, candidates, cfg, source, seed, has_subtypes,
                  report_dir / REPORT_FILES["overview"])

    meta[list(METADATA_COLUMNS)].to_csv(out_dir / "metadata.csv", index=False)
    counts = {s: int((meta["split"] == s).sum()) for s in SPLITS}
    info = {
        "data_source": source, "root": str(root), "resize": cfg.resize, "crop": cfg.crop,
        "variants": variants, "clahe": params["clahe"], "counts": counts,
        "has_subtypes": has_subtypes, "split_seed": seed, "val_fraction": val_fraction,
    }
    (out_dir / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    summary = _summary(meta, rejected, source, root, params, has_subtypes, n_candidates)
    (report_dir / REPORT_FILES["summary"]).write_text(json.dumps(summary, indent=2) + "\n")
    n = len(meta)
    log.info("prepared %d images (%s) in %.1f s (%.0f images/s); %d rejected; %d duplicate "
             "groups; %d patients and %d identical-image groups shared between splits",
             n, counts, elapsed, n / max(elapsed, 1e-9), len(rejected),
             summary["duplicates"]["n_groups"], summary["leakage"]["n_patients_in_two_splits"],
             summary["leakage"]["n_duplicate_groups_across_splits"])
    return summary


def _prepare_arrays(candidates, rejected, official, cfg, variants, out_dir, report_dir, root,
                    source, val_fraction, seed, threads, progress):
    """Decode + preprocess, write rejected.csv, carve val, write the arrays; -> metadata."""
    n_candidates = len(candidates) + _n_name_rejections(rejected)
    scratch_dir = out_dir / _SCRATCH
    try:
        t0 = time.perf_counter()
        kept, scratch = process_candidates(candidates, cfg, variants, scratch_dir, threads, progress,
                                     rejected)
        t1 = time.perf_counter()
        log.info("decoded and preprocessed %d images in %.1f s (%.0f images/s, %d threads)",
                 len(candidates), t1 - t0, len(candidates) / max(t1 - t0, 1e-9), threads)
        rejected_csv = report_dir / REPORT_FILES["rejected"]
        _write_rejected(rejected_csv, rejected)
        for file, reason in rejected:
            log.warning("rejected %s: %s", file, reason)
        meta = _assign_splits(kept, official, root, source, val_fraction, seed, rejected_csv)
        log.info("splits assigned in %.1f s", time.perf_counter() - t1)
        _write_arrays(out_dir, meta, scratch, variants, cfg.crop)
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    return meta, rejected, n_candidates


# -- candidates ------------------------------------------------------------------------------

def _folder_candidates(root: Path, source: str, min_side: int, max_pixels: int):
    try:
        files = kermany.scan_kermany(root)
    except FileNotFoundError as err:
        if source == "demo":
            raise MissingInputError(
                f"{root}: demo data not generated yet; the demo workflow makes it "
                "(`snakemake --configfile config/demo.yaml` or `make demo`)") from err
        raise
    candidates, rejected = [], []
    for f in files:
        try:
            parsed = kermany.parse_filename(f.path.name)
        except kermany.FileNameError as err:
            rejected.append((f.rel, f"bad_name: {err}"))
            continue
        if parsed.label != f.label:
            rejected.append((f.rel, f"label_mismatch: the name says {parsed.label} but the "
                                    f"file is in the {f.label} folder"))
            continue
        load = partial(read_image, f.path, min_side=min_side, max_pixels=max_pixels)
        candidates.append(Candidate(f.rel, f.split, f.label, parsed.subtype, parsed.patient,
                                    load))
    official = sorted({f.split for f in files}, key=kermany.SPLIT_FOLDERS.index)
    return candidates, rejected, official


def _medmnist_candidates(path: Path, min_side: int, max_pixels: int):
    splits = medmnist.load_npz(path)
    h, w = splits["train"].images.shape[1:3]
    if min(h, w) < min_side:
        raise InputError(f"{path}: images are {w}x{h}, under data.min_side ({min_side} px); "
                         f"set data.min_side: {min(h, w)} (or lower) to use this file")
    if h * w > max_pixels:
        raise InputError(f"{path}: images are {w}x{h}, over data.max_pixels ({max_pixels})")
    candidates = []
    for name, sp in splits.items():
        for i in range(len(sp.images)):
            label = medmnist.LABEL_NAMES[int(sp.labels[i])]
            candidates.append(Candidate(f"{name}_images[{i}]", name, label, "unknown",
                                        f"{name}-{i:05d}", partial(_npz_image, sp, i)))
    return candidates, [], list(medmnist.NPZ_SPLITS)


def _npz_image(sp: medmnist.NpzSplit, i: int) -> DecodedImage:
    raw = np.ascontiguousarray(sp.images[i])
    gray = sp.gray(i)
    return DecodedImage(gray, gray.shape[1], gray.shape[0], hashlib.sha256(raw.tobytes())
                        .hexdigest(), f"npz {raw.dtype}")


def _n_name_rejections(rejected) -> int:
    return sum(r.startswith(("bad_name", "label_mismatch")) for _, r in rejected)


# -- decoding and preprocessing ---------------------------------------------------------------

@contextlib.contextmanager
def _opencv_single_thread() -> Iterator[None]:
    """Parallelism is over images; OpenCV's own threads would only oversubscribe the cores."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def process_candidates(candidates, cfg, variants, scratch_dir, threads, progress, rejected):
    """Decode + preprocess every candidate into per-variant scratch arrays (row i = candidate
    i). Returns the metadata of the kept ones and the scratch arrays; appends rejections."""
    n = len(candidates)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    scratch = {v: np.lib.format.open_memmap(scratch_dir / f"{v}.npy", mode="w+",
                                            dtype=np.uint8, shape=(n, cfg.crop, cfg.crop))
               for v in variants}

    def work(i: int):
        try:
            dec = candidates[i].load()
        except BadImageError as err:
            return err
        for name, img in make_variants(dec.pixels, cfg, variants).items():
            scratch[name][i] = img
        return (dec.sha256, dec.width, dec.height, dec.mode)

    results: list = [None] * n
    with _opencv_single_thread(), ThreadPoolExecutor(max_workers=threads) as pool, \
            tqdm(total=n, desc="prepare", unit="img", disable=not progress) as bar:
        futures = {pool.submit(work, i): i for i in range(n)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            bar.update()
    rows = []
    for i, (cand, res) in enumerate(zip(candidates, results)):
        if isinstance(res, BadImageError):
            rejected.append((cand.file, str(res)))
            continue
        sha, width, height, mode = res
        rows.append({"cand": i, "file": cand.file, "official_split": cand.official_split,
                     "label": cand.label, "subtype": cand.subtype, "patient": cand.patient,
                     "sha256": sha, "orig_width": width, "orig_height": height, "mode": mode})
    rejected.sort()
    kept = pd.DataFrame(rows, columns=["cand", "file", "official_split", "label", "subtype",
                                       "patient", "sha256", "orig_width", "orig_height", "mode"])
    return kept, scratch


# -- splits ------------------------------------------------------------------------------------

def _assign_splits(kept: pd.DataFrame, official: list[str], root: Path, source: str,
                   val_fraction: float, seed: int, rejected_csv: Path) -> pd.DataFrame:
    where = (f"{root}/{{split}}/{{label}}" if source != "medmnist"
             else f"{root} ({{split}}_images, label {{label}})")
    for split in official:
        for label in LABELS:
            if not ((kept["official_split"] == split) & (kept["label"] == label)).any():
                raise InputError(
                    f"{where.format(split=split, label=label)}: no usable images (every file "
                    f"was rejected or none was there; see {rejected_csv}); each official split "
                    f"needs both classes. {kermany.EXPECTED_LAYOUT if source != 'medmnist' else ''}"
                    .rstrip())
    meta = kept.copy()
    meta["split"] = meta["official_split"].map(lambda s: OFFICIAL_TO_SPLIT.get(s, "train"))
    train = np.flatnonzero(meta["official_split"].to_numpy() == "train")
    strata = _strata(meta).to_numpy()[train]
    groups = link_groups(meta["patient"].to_numpy()[train].tolist(),
                         meta["sha256"].to_numpy()[train].tolist())
    is_val = carve_validation(strata, groups, val_fraction, seed)
    meta.loc[meta.index[train[is_val]], "split"] = "val"
    for split in ("train", "val"):
        missing = [lb for lb in LABELS if not ((meta["split"] == split)
                                               & (meta["label"] == lb)).any()]
        if missing:
            raise InputError(
                f"{root}: the carved {split!r} split has no {'/'.join(missing)} images; the "
                f"train folder holds too few patients for data.val_fraction={val_fraction}")
    order = {s: i for i, s in enumerate(SPLITS)}
    meta = meta.sort_values(["split", "cand"], key=lambda c: c.map(order) if c.name == "split"
                            else c, kind="stable").reset_index(drop=True)
    meta["index"] = meta.groupby("split").cumcount()
    return meta


def _strata(meta: pd.DataFrame) -> pd.Series:
    """Stratify by subtype (normal/bacteria/virus) when known, else by class."""
    return meta["subtype"].where(meta["subtype"] != "unknown", meta["label"].str.lower())


# -- outputs ------------------------------------------------------------------------------------

def _write_arrays(out_dir: Path, meta: pd.DataFrame, scratch: dict, variants, crop: int) -> None:
    for stale in set(VARIANTS) - set(variants):
        for split in SPLITS:
            (out_dir / stale / f"{split}.npy").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (out_dir / stale).rmdir()
    for variant in variants:
        (out_dir / variant).mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            idx = meta.loc[meta["split"] == split, "cand"].to_numpy()
            arr = np.lib.format.open_memmap(out_dir / variant / f"{split}.npy", mode="w+",
                                            dtype=np.uint8, shape=(len(idx), crop, crop))
            for start in range(0, len(idx), 1024):
                arr[start:start + 1024] = scratch[variant][idx[start:start + 1024]]
            arr.flush()
            del arr
        scratch[variant].flush()


def _write_rejected(path: Path, rejected: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "reason"])
        writer.writerows(rejected)


def _summary(meta: pd.DataFrame, rejected, source: str, root: Path, params: dict,
             has_subtypes: bool, n_candidates: int) -> dict:
    split = meta["split"].tolist()
    subtype_cats = list(SUBTYPES) if has_subtypes else ["unknown"]

    def counts(by: str) -> dict:
        labels = split_counts(meta[by], meta["label"], LABELS)
        subtypes = split_counts(meta[by], meta["subtype"], subtype_cats)
        names = SPLITS if by == "split" else list(labels)
        return {s: {"total": int(sum(labels.get(s, {}).values())),
                    "label": labels.get(s, dict.fromkeys(LABELS, 0)),
                    "subtype": subtypes.get(s, dict.fromkeys(subtype_cats, 0))}
                for s in names}

    dups = duplicate_groups(meta["sha256"].tolist(), meta["file"].tolist(), split,
                            meta["patient"].tolist())
    overlap = patient_overlap(split, meta["patient"].tolist())
    crossing = [g for g in dups if g["crosses_splits"]]
    strata = _strata(meta)
    train, val = strata[meta["split"] == "train"], strata[meta["split"] == "val"]
    kinds = Counter(reason.split(":", 1)[0] for _, reason in rejected)
    return {
        "data_source": source,
        "root": str(root),
        "n_candidates": int(n_candidates),
        "n_images": int(len(meta)),
        "has_subtypes": has_subtypes,
        "counts": counts("split"),
        "counts_official": counts("official_split"),
        "patients": {s: int(meta.loc[meta["split"] == s, "patient"].nunique())
                     for s in SPLITS},
        "stratification": {
            "by": "subtype" if has_subtypes else "label",
            "train": proportions(train.tolist()),
            "val": proportions(val.tolist()),
            "max_gap_points": round(max_proportion_gap(train.tolist(), val.tolist()), 3),
        },
        "rejected": {"count": len(rejected),
                     "by_kind": {k: kinds[k] for k in REJECT_KINDS if kinds[k]}},
        "duplicates": {
            "n_groups": len(dups),
            "n_files": int(sum(len(g["files"]) for g in dups)),
            "group_sizes": {str(k): v for k, v in
                            sorted(Counter(len(g["files"]) for g in dups).items())},
            "groups": dups,
        },
        "leakage": {
            "patient_overlap": overlap,
            "n_patients_in_two_splits": int(len({p for ps in overlap.values() for p in ps})),
            "duplicate_groups_across_splits": crossing,
            "n_duplicate_groups_across_splits": len(crossing),
        },
        "source_modes": dict(sorted(Counter(meta["mode"]).items())),
        "params": params,
    }


def _overview(meta: pd.DataFrame, candidates: list[Candidate], cfg: PreprocessConfig,
              source: str, seed: int, has_subtypes: bool, path: Path) -> None:
    from ..plots.data import plot_data_overview

    rng = np.random.default_rng(seed)
    cls = meta["subtype"] if has_subtypes else meta["label"].str.lower()
    pool = meta["official_split"] == "train"
    examples = {}
    for name in (SUBTYPES if has_subtypes else ("normal", "pneumonia")):
        cand_idx = meta.loc[pool & (cls == name), "cand"].to_numpy()
        if len(cand_idx) == 0:
            continue
        chosen = np.sort(rng.choice(cand_idx, size=min(N_EXAMPLES, len(cand_idx)),
                                    replace=False))
        pairs = []
        for i in chosen:
            gray = candidates[int(i)].load().pixels
            pairs.append((preprocess(gray, cfg, clahe=False), preprocess(gray, cfg, clahe=True)))
        examples[name] = pairs
    counts = split_counts(meta["split"], cls, list(examples))
    plot_data_overview(examples, counts, source, path)
