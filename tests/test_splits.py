"""Patient-grouped stratified validation carving and the leakage checks."""

from __future__ import annotations

import numpy as np
import pytest

from pneumocxr.data.splits import (carve_validation, duplicate_groups, link_groups,
                                   max_proportion_gap, patient_overlap, proportions,
                                   split_counts)


def _cohort(seed=0, n_patients=250):
    """Patients with 1-6 images each; class mix like the Kermany train split."""
    rng = np.random.default_rng(seed)
    strata, patients = [], []
    for p in range(n_patients):
        cls = rng.choice(["normal", "bacteria", "virus"], p=[0.26, 0.49, 0.25])
        k = int(rng.integers(1, 7))
        strata += [cls] * k
        patients += [f"{cls}-{p}"] * k
    return np.array(strata), np.array(patients)


def test_carved_val_shares_no_patient_with_train():
    strata, patients = _cohort()
    val = carve_validation(strata, link_groups(patients.tolist()), 0.1, seed=42)
    assert not set(patients[val]) & set(patients[~val])


def test_carved_val_is_stratified_within_2_points():
    strata, patients = _cohort()
    val = carve_validation(strata, link_groups(patients.tolist()), 0.1, seed=42)
    assert max_proportion_gap(strata[val], strata[~val]) <= 2.0
    assert max_proportion_gap(strata[val], strata) <= 2.0


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.25])
def test_carved_val_holds_about_val_fraction_of_the_patients(fraction):
    strata, patients = _cohort(seed=1)
    val = carve_validation(strata, link_groups(patients.tolist()), fraction, seed=0)
    share = len(set(patients[val])) / len(set(patients))
    assert abs(share - fraction) < 0.03


def test_carving_is_seeded():
    strata, patients = _cohort(seed=2)
    groups = link_groups(patients.tolist())
    a = carve_validation(strata, groups, 0.1, seed=5)
    np.testing.assert_array_equal(a, carve_validation(strata, groups, 0.1, seed=5))
    assert not np.array_equal(a, carve_validation(strata, groups, 0.1, seed=6))


def test_identical_images_of_different_patients_stay_on_one_side():
    strata, patients = _cohort(seed=3, n_patients=120)
    hashes = [f"h{i}" for i in range(len(strata))]
    # make the first image of every patient byte-identical to the first image of the next one
    firsts = [np.flatnonzero(patients == p)[0] for p in dict.fromkeys(patients)]
    for a, b in zip(firsts[:-1:2], firsts[1::2]):
        hashes[b] = hashes[a]
    groups = link_groups(patients.tolist(), hashes)
    assert len(np.unique(groups)) == len(firsts) // 2 + len(firsts) % 2
    val = carve_validation(strata, groups, 0.1, seed=0)
    hashes = np.array(hashes)
    assert not set(hashes[val]) & set(hashes[~val])
    assert not set(patients[val]) & set(patients[~val])


def test_link_groups_joins_patients_through_shared_images():
    groups = link_groups(["a", "a", "b", "c", "d"], ["h1", "h2", "h2", "h3", "h4"])
    assert groups.tolist() == [0, 0, 0, 1, 2]
    assert link_groups(["x", "y", "x"]).tolist() == [0, 1, 0]


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(ValueError, match="only 5 patients .* too few"):
        carve_validation(["a"] * 5, list(range(5)), 0.1, seed=0)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        carve_validation(["a"] * 50, list(range(50)), 0.5, seed=0)


def test_patient_overlap_lists_every_pair_of_splits():
    out = patient_overlap(["train", "train", "test", "val", "test"], ["p1", "p2", "p1", "p3", "p4"])
    assert out == {"train|val": [], "train|test": ["p1"], "val|test": []}


def test_duplicate_groups_report_files_splits_and_crossing():
    groups = duplicate_groups(["h1", "h2", "h1", "h3", "h3", "h3"],
                              ["b.jpeg", "x.jpeg", "a.jpeg", "c1", "c2", "c3"],
                              ["train", "train", "test", "val", "val", "val"],
                              ["p1", "p2", "p9", "p3", "p3", "p3"])
    assert len(groups) == 2
    assert groups[0] == {"sha256": "h1", "files": ["a.jpeg", "b.jpeg"],
                         "splits": ["train", "test"], "patients": ["p1", "p9"],
                         "crosses_splits": True}
    assert groups[1]["files"] == ["c1", "c2", "c3"] and not groups[1]["crosses_splits"]


def test_split_counts_fill_zeros_in_canonical_order():
    out = split_counts(["test", "train", "val_official"], ["virus", "normal", "normal"],
                       ["normal", "bacteria", "virus"])
    assert list(out) == ["train", "test", "val_official"]
    assert out["test"] == {"normal": 0, "bacteria": 0, "virus": 1}
    assert proportions(["a", "b", "b", "b"]) == {"a": 0.25, "b": 0.75}
