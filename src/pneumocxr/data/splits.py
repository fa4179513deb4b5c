"""Patient-grouped, stratified validation carving and the leakage checks between splits.

The validation split is carved from the official train split with scikit-learn's
:class:`~sklearn.model_selection.StratifiedGroupKFold`: ``k = round(1 / val_fraction)`` folds
over *groups*, and the fold whose class mix is closest to the rest becomes ``val``. Groups are
patients joined with byte-identical images (:func:`link_groups`), so neither a patient nor an
identical image can end up on both sides: zero overlap by construction. The achieved fraction is
``1 / k`` of the groups (exactly ``val_fraction`` when ``1 / val_fraction`` is a whole number,
e.g. 0.1 -> 10 folds).
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import InputError

log = logging.getLogger(__name__)


def link_groups(patients: Sequence[str], hashes: Sequence[str] | None = None) -> np.ndarray:
    """Group ids (0..G-1, in order of first appearance) joining images that share a patient
    or, when ``hashes`` is given, identical bytes (connected components, union-find)."""
    n = len(patients)
    if hashes is not None and len(hashes) != n:
        raise InputError(f"{len(hashes)} hashes for {n} patients")
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for keys in (patients, hashes) if hashes is not None else (patients,):
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            j = first.setdefault(key, i)
            if j != i:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    roots = [find(i) for i in range(n)]
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(r, len(ids)) for r in roots], dtype=np.int64)


def proportions(strata: Sequence[str]) -> dict[str, float]:
    counts = Counter(strata)
    total = sum(counts.values())
    return {k: counts[k] / total for k in sorted(counts)} if total else {}


def max_proportion_gap(a: Sequence[str], b: Sequence[str]) -> float:
    """Largest absolute difference, in percentage points, between the class shares of a and b."""
    pa, pb = proportions(a), proportions(b)
    return max((abs(pa.get(k, 0.0) - pb.get(k, 0.0)) * 100 for k in set(pa) | set(pb)),
               default=0.0)


def carve_validation(strata: Sequence[str], groups: Sequence, val_fraction: float,
                     seed: int) -> np.ndarray:
    """Boolean mask of the rows that form the validation split.

    Args:
        strata: class of each row (e.g. ``normal``/``bacteria``/``virus``).
        groups: group of each row (see :func:`link_groups`); a group is never split.
        val_fraction: share of the groups to carve out, in (0, 0.5).
        seed: ``random_state`` of the shuffled ``StratifiedGroupKFold``.

    Raises:
        ValueError: bad ``val_fraction`` or fewer groups than folds.
    """
    strata = np.asarray(strata)
    groups = np.asarray(groups)
    if len(strata) != len(groups):
        raise InputError(f"{len(strata)} strata for {len(groups)} groups")
    if not 0 < val_fraction < 0.5:
        raise InputError(f"data.val_fraction must be in (0, 0.5), got {val_fraction}")
    k = max(2, int(round(1 / val_fraction)))
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise InputError(
            f"only {n_groups} patients in the train split: too few to carve a validation split "
            f"of data.val_fraction={val_fraction} ({k} folds); add data or raise val_fraction")
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    best, best_gap = None, np.inf
    for _, fold in sgkf.split(np.zeros(len(strata)), strata, groups):
        rest = np.ones(len(strata), dtype=bool)
        rest[fold] = False
        gap = max_proportion_gap(strata[fold], strata[rest])
        if gap < best_gap:   # first fold wins ties: deterministic
            best, best_gap = fold, gap
    mask = np.zeros(len(strata), dtype=bool)
    mask[best] = True
    log.info("validation carved: %d of %d rows (%d of %d groups), class-share gap %.2f points",
             mask.sum(), len(mask), len(np.unique(groups[mask])), n_groups, best_gap)
    return mask


def patient_overlap(split: Sequence[str], patients: Sequence[str]) -> dict[str, list[str]]:
    """Patients present in two splits: ``{"train|test": [patient, ...]}`` for every pair of
    splits (sorted; an empty list when the pair shares nobody)."""
    by_split: dict[str, set[str]] = {}
    for s, p in zip(split, patients):
        by_split.setdefault(s, set()).add(p)
    return {f"{a}|{b}": sorted(by_split[a] & by_split[b])
            for a, b in itertools.combinations(sorted(by_split, key=_split_order), 2)}


def duplicate_groups(hashes: Sequence[str], files: Sequence[str], split: Sequence[str],
                     patients: Sequence[str]) -> list[dict]:
    """Groups of byte-identical images (two or more files with one sha256), ordered by their
    first file; each lists its files, splits, patients and whether it crosses splits."""
    members: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        members.setdefault(h, []).append(i)
    groups = []
    for h, idx in members.items():
        if len(idx) < 2:
            continue
        idx = sorted(idx, key=lambda i: files[i])
        splits = sorted({split[i] for i in idx}, key=_split_order)
        groups.append({
            "sha256": h,
            "files": [files[i] for i in idx],
            "splits": splits,
            "patients": sorted({patients[i] for i in idx}),
            "crosses_splits": len(splits) > 1,
        })
    return sorted(groups, key=lambda g: g["files"][0])


_ORDER = {"train": 0, "val": 1, "test": 2, "val_official": 3}


def _split_order(name: str) -> tuple[int, str]:
    return (_ORDER.get(name, len(_ORDER)), name)


def split_counts(split: Sequence[str], key: Sequence[str],
                 categories: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """``{split: {category: count}}``, splits in the canonical order; ``categories`` (if given)
    are listed in that order, zeros included."""
    out: dict[str, Counter] = {}
    for s, k in zip(split, key):
        out.setdefault(s, Counter())[k] += 1
    cats = list(categories) if categories is not None else sorted(set(key))
    return {s: {c: int(out[s].get(c, 0)) for c in cats} for s in sorted(out, key=_split_order)}
