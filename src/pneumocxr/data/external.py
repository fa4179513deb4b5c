"""External test sets: another site's (or another acquisition's) labelled images, prepared
exactly as the training images were, for evaluation only.

A set is named in params ``external`` (``external.<name>.path``) and is one of:

* a folder of class folders ``NORMAL/`` and ``PNEUMONIA/`` (the Kaggle ``test`` layout, also
  ``<path>/test/NORMAL``...); Kermany file names give the subtype and the patient;
* a folder of images with a labels CSV (``external.<name>.labels``, default
  ``<path>/labels.csv``): columns ``file`` (relative to the folder), ``label`` (NORMAL /
  PNEUMONIA, or normal / pneumonia / bacteria / virus), and optionally ``patient`` and
  ``subtype`` (normal / bacteria / virus);
* a PneumoniaMNIST-style ``.npz`` (split ``external.<name>.npz_split``, default ``test``).

:func:`prepare_external` decodes every file with the same checks as ``prepare`` (a bad file is
listed in the set's ``rejected.csv`` and skipped), applies the training images' preprocessing
(read from the prepared training data's ``info.json``: resize, crop, CLAHE), and excludes, with
a report, any image whose bytes (sha256) are also in the training data. Without patient ids
each image is its own bootstrap group, and the set's report says so. The output folder has the
prepared-data layout with one split, ``test``, so every evaluation reads it like the dev test.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..errors import InputError, MissingInputError
from . import kermany, medmnist
from .arrays import METADATA_COLUMNS, read_info
from .images import pil_pixel_limit, read_image
from .prepare import Candidate, _npz_image, process_candidates
from .preprocess import PreprocessConfig
from .sources import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

LABEL_WORDS = {"normal": ("NORMAL", "normal"), "pneumonia": ("PNEUMONIA", "unknown"),
               "bacteria": ("PNEUMONIA", "bacteria"), "virus": ("PNEUMONIA", "virus")}
SUBTYPE_WORDS = ("normal", "bacteria", "virus")


@dataclass(frozen=True)
class ExternalSet:
    """Params ``external.<name>``: where the set is and how its labels are given."""

    name: str
    path: Path
    labels: Path | None
    npz_split: str

    @classmethod
    def from_params(cls, name: str, spec: Mapping[str, Any]) -> "ExternalSet":
        """From ``external.<name>`` (the schema fills in ``labels`` and ``npz_split``)."""
        from ..config import complete

        p = complete("external", {name: dict(spec)})[name]
        return cls(name, Path(p["path"]), Path(p["labels"]) if p["labels"] else None,
                   p["npz_split"])

    @property
    def format(self) -> str:
        if self.path.suffix == ".npz":
            return "npz"
        if self.labels is not None or (self.path / "labels.csv").is_file():
            return "csv"
        return "folders"


def _kermany_fields(name: str, label: str) -> tuple[str, str | None]:
    """(subtype, patient) from a Kermany file name; (unknown, None) for any other name."""
    try:
        parsed = kermany.parse_filename(name)
    except kermany.FileNameError:
        return ("normal" if label == "NORMAL" else "unknown"), None
    if parsed.label != label:
        return ("normal" if label == "NORMAL" else "unknown"), None
    return parsed.subtype, parsed.patient


def _folder_candidates(ext: ExternalSet, min_side: int, max_pixels: int):
    root = ext.path
    if not root.is_dir():
        raise MissingInputError(f"{root}: external set {ext.name!r} not found; give a folder of "
                                "NORMAL/ and PNEUMONIA/ image folders, a folder with labels.csv, "
                                "or an .npz (params external.<name>.path)")
    base = root / "test" if (root / "test" / "NORMAL").is_dir() else root
    folders = {lab: base / lab for lab in ("NORMAL", "PNEUMONIA")}
    missing = [lab for lab, d in folders.items() if not d.is_dir()]
    if missing:
        raise InputError(f"{root}: external set {ext.name!r} has no {', '.join(missing)} folder; "
                         "expected NORMAL/ and PNEUMONIA/ (or a labels.csv beside the images)")
    candidates = []
    for label, folder in folders.items():
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = str(f.relative_to(root))
            subtype, patient = _kermany_fields(f.name, label)
            candidates.append(Candidate(rel, "test", label, subtype, patient or "",
                                        partial(read_image, f, min_side=min_side,
                                                max_pixels=max_pixels)))
    return candidates, []


def _csv_candidates(ext: ExternalSet, min_side: int, max_pixels: int):
    root = ext.path
    path = ext.labels if ext.labels is not None else root / "labels.csv"
    if not path.is_absolute() and not path.is_file():
        path = root / path
    if not path.is_file():
        raise MissingInputError(f"{path}: labels CSV of external set {ext.name!r} not found")
    df = pd.read_csv(path, dtype=str).fillna("")
    missing = {"file", "label"} - set(df.columns)
    if missing:
        raise InputError(f"{path}: needs columns file and label (optional: patient, subtype); "
                         f"missing {sorted(missing)}")
    candidates, rejected = [], []
    for row in df.itertuples(index=False):
        word = str(row.label).strip().lower()
        if word not in LABEL_WORDS:
            rejected.append((row.file, f"bad_label: {row.label!r} is not one of "
                                       f"{sorted(LABEL_WORDS)} (or NORMAL / PNEUMONIA)"))
            continue
        label, subtype = LABEL_WORDS[word]
        given = str(getattr(row, "subtype", "") or "").strip().lower()
        if given:
            if given not in SUBTYPE_WORDS or (given == "normal") != (label == "NORMAL"):
                rejected.append((row.file, f"bad_subtype: {given!r} does not fit label {label}"))
                continue
            subtype = given
        f = root / row.file
        if not f.is_file():
            rejected.append((row.file, "missing: listed in the labels CSV but not found"))
            continue
        candidates.append(Candidate(row.file, "test", label, subtype,
                                    str(getattr(row, "patient", "") or ""),
                                    partial(read_image, f, min_side=min_side,
                                            max_pixels=max_pixels)))
    return candidates, rejected


def _npz_candidates(ext: ExternalSet, min_side: int, max_pixels: int):
    splits = medmnist.load_npz(ext.path)
    if ext.npz_split not in splits:
        raise InputError(f"{ext.path}: no split {ext.npz_split!r} (has {sorted(splits)}); set "
                         f"external.{ext.name}.npz_split")
    sp = splits[ext.npz_split]
    h, w = sp.images.shape[1:3]
    if min(h, w) < min_side:
        raise InputError(f"{ext.path}: images are {w}x{h}, under data.min_side ({min_side} px)")
    return [Candidate(f"{ext.npz_split}_images[{i}]", "test",
                      medmnist.LABEL_NAMES[int(sp.labels[i])], "unknown", "",
                      partial(_npz_image, sp, i)) for i in range(len(sp.images))], []


def candidates_of(ext: ExternalSet, min_side: int, max_pixels: int):
    """The candidate images of a set and the files rejected before decoding."""
    if ext.format == "npz":
        return _npz_candidates(ext, min_side, max_pixels)
    if ext.format == "csv":
        return _csv_candidates(ext, min_side, max_pixels)
    return _folder_candidates(ext, min_side, max_pixels)


def raw_files(ext: ExternalSet) -> list[str]:
    """Every file the set's preparation reads (so a replaced image reruns it)."""
    if ext.format == "npz":
        return [str(ext.path)]
    files = sorted(str(p) for p in ext.path.rglob("*") if p.is_file()
                   and (p.suffix.lower() in IMAGE_SUFFIXES or p.name == "labels.csv"))
    if ext.labels is not None and ext.labels.is_file():
        files.append(str(ext.labels))
    return files


def prepare_external(
    ext: ExternalSet,
    processed_dir: str | Path,
    out_dir: str | Path,
    report_path: str | Path,
    rejected_path: str | Path,
    *,
    min_side: int,
    max_pixels: int,
    threads: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Prepare one external set like the training images (see the module docs)."""
    info = read_info(processed_dir)
    if not {"resize", "crop", "clahe", "variants"} <= set(info):
        raise InputError(f"{processed_dir}/info.json does not record the preprocessing; rerun "
                         "prepare")
    cfg = PreprocessConfig.from_params({k: info[k] for k in ("resize", "crop", "clahe")})
    variants = list(info["variants"])
    out_dir, report_path, rejected_path = Path(out_dir), Path(report_path), Path(rejected_path)
    candidates, rejected = candidates_of(ext, min_side, max_pixels)
    if not candidates:
        raise InputError(f"{ext.path}: external set {ext.name!r} has no images")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    with pil_pixel_limit(max_pixels):
        kept, scratch = process_candidates(candidates, cfg, variants, out_dir / ".scratch",
                                           threads, progress, rejected)
    try:
        train_meta = pd.read_csv(Path(processed_dir) / "metadata.csv", dtype=str)
        in_train = set(train_meta.loc[train_meta["split"].isin(["train", "val"]), "sha256"])
        dup = kept["sha256"].isin(in_train).to_numpy()
        excluded = kept.loc[dup, "file"].tolist()
        for f in excluded:
            rejected.append((f, "in_train: the same image (sha256) is in the training data"))
        kept = kept.loc[~dup].reset_index(drop=True)
        if kept.empty:
            raise InputError(f"{ext.path}: every image of external set {ext.name!r} was rejected "
                             f"or is in the training data; see {rejected_path}")
        known_patients = bool((kept["patient"] != "").all())
        if not known_patients:   # each image its own bootstrap group
            kept["patient"] = [p or f"image:{f}" for p, f in zip(kept["patient"], kept["file"])]
        kept = kept.sort_values(["label", "file"], kind="stable").reset_index(drop=True)
        kept.insert(0, "split", "test")
        kept.insert(1, "index", np.arange(len(kept)))
        kept["official_split"] = "external"
        for v in variants:
            (out_dir / v).mkdir()
            np.save(out_dir / v / "test.npy", np.ascontiguousarray(scratch[v][kept["cand"]]))
        kept[list(METADATA_COLUMNS)].to_csv(out_dir / "metadata.csv", index=False)
    finally:
        shutil.rmtree(out_dir / ".scratch", ignore_errors=True)
    has_subtypes = bool((kept["subtype"] != "unknown").all())
    patients_train = set(train_meta["patient"]) if known_patients else set()
    report = {
        "name": ext.name, "path": str(ext.path), "format": ext.format,
        "data_source": f"external:{ext.name}", "training_data_source": info.get("data_source"),
        "n_candidates": len(candidates) + len(rejected) - len(excluded),
        "n_images": int(len(kept)), "n_rejected": len(rejected) - len(excluded),
        "n_excluded_in_train": len(excluded), "excluded_in_train": excluded,
        "label_counts": {k: int(v) for k, v in kept["label"].value_counts().sort_index().items()},
        "subtype_counts": {k: int(v) for k, v in
                           kept["subtype"].value_counts().sort_index().items()},
        "has_subtypes": has_subtypes, "patients_known": known_patients,
        "n_patients": int(kept["patient"].nunique()),
        "patient_keys_also_in_train": int(len(set(kept["patient"]) & patients_train)),
        "bootstrap_unit": "patient" if known_patients else
        "image (no patient ids: images of one patient may be resampled apart)",
        "prevalence": float((kept["label"] == "PNEUMONIA").mean()),
        "preprocess": {"resize": cfg.resize, "crop": cfg.crop,
                       "clahe": {"clip_limit": cfg.clip_limit, "tile_grid": cfg.tile_grid},
                       "variants": variants, "from": str(Path(processed_dir) / "info.json")},
    }
    (out_dir / "info.json").write_text(json.dumps({
        "data_source": report["data_source"], "resize": cfg.resize, "crop": cfg.crop,
        "clahe": report["preprocess"]["clahe"], "variants": variants,
        "counts": {"test": int(len(kept))}, "has_subtypes": has_subtypes,
        "patients_known": known_patients}, indent=2) + "\n")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    rejected_path.parent.mkdir(parents=True, exist_ok=True)
    with rejected_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "reason"])
        w.writerows(sorted(rejected))
    for f, reason in rejected:
        log.warning("external set %s: rejected %s: %s", ext.name, f, reason)
    log.info("external set %s: %d images (%s), %d rejected, %d excluded as training images, "
             "patients %s", ext.name, len(kept), report["label_counts"],
             report["n_rejected"], len(excluded), "known" if known_patients else "unknown")
    return report
