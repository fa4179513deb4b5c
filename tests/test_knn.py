"""k-NN selection, index round trip and neighbour lookup (pneumocxr.knn)."""

from __future__ import annotations

import numpy as np
import pytest

from pneumocxr import knn


def _polar(angle_deg: np.ndarray, radius: np.ndarray) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1).astype(np.float32)


def test_select_knn_picks_k1_when_only_the_nearest_neighbour_has_the_right_label():
    # each validation point has an exact-label twin in train, surrounded by 4 points of the
    # other class slightly further away: k=1 is right everywhere, k>=3 wrong everywhere
    rng = np.random.default_rng(0)
    centres = rng.uniform(-50, 50, size=(12, 2)).astype(np.float32)
    val_y = np.arange(12) % 2
    train_x, train_y = [], []
    for c, y in zip(centres, val_y):
        train_x.append(c + [0.01, 0.0])
        train_y.append(y)
        for dx, dy in ((0.1, 0), (-0.1, 0), (0, 0.1), (0, -0.1)):
            train_x.append(c + [dx, dy])
            train_y.append(1 - y)
    sel = knn.select_knn(np.array(train_x), np.array(train_y), centres, val_y, ks=[5, 3, 1])
    assert sel.k == 1
    assert sel.score == 1.0
    scores = {(r["k"], r["metric"]): r["score"] for r in sel.candidates}
    assert scores[(3, "euclidean")] == 0.0 and scores[(5, "euclidean")] == 0.0


@pytest.mark.parametrize("signal, expected", [("direction", "cosine"), ("norm", "euclidean")])
def test_select_knn_picks_the_metric_that_matches_what_separates_the_classes(signal, expected):
    rng = np.random.default_rng(1)
    n = 40
    y = np.arange(n) % 2
    if signal == "direction":
        # class = direction (0 or 90 degrees); train norms are confounded with the class
        # (class 0 far, class 1 near) and validation class-0 points sit near the origin, so
        # euclidean distance votes for class 1 while the angle (cosine) is right
        train_x = _polar(np.where(y == 0, 0, 90) + rng.normal(0, 5, n), np.where(y == 0, 10, 1.0))
        val_x = _polar(np.where(y == 0, 0, 90) + rng.normal(0, 5, n), np.ones(n))
    else:
        # class = norm (1 or 5), directions uniformly random: cosine is blind to it
        train_x = _polar(rng.uniform(0, 360, n), np.where(y == 0, 1.0, 5.0))
        val_x = _polar(rng.uniform(0, 360, n), np.where(y == 0, 1.0, 5.0))
    sel = knn.select_knn(train_x, y, val_x, y, ks=[1, 3, 5], metrics=["cosine", "euclidean"])
    assert sel.metric == expected
    assert sel.score == 1.0
    other = "euclidean" if expected == "cosine" else "cosine"
    assert max(r["score"] for r in sel.candidates if r["metric"] == other) < 0.8


def test_select_knn_breaks_ties_towards_small_k_then_the_first_metric():
    x = np.array([[0, 0], [0, 1], [1, 0], [10, 10], [10, 11], [11, 10]], dtype=np.float32) + 1
    y = np.array([0, 0, 0, 1, 1, 1])
    sel = knn.select_knn(x, y, x + 0.1, y, ks=[3, 1], metrics=["euclidean", "cosine"])
    assert (sel.k, sel.metric, sel.score) == (1, "euclidean", 1.0)


def test_select_knn_uses_the_requested_criterion():
    # val: 9 of class 1, 1 of class 0; k=3 always says class 1 (accuracy 0.9, balanced 0.5);
    # k=1 gets the class-0 point right and 6 of 9 class-1 points (accuracy 0.7, balanced 0.83)
    train_x = np.array([[0.0], [1.0], [1.1], [5.0], [5.1], [5.2], [9.0], [9.1], [9.2]])
    train_y = np.array([0, 1, 1, 1, 1, 1, 0, 1, 1])
    val_x = np.array([[0.05], [5.05], [5.1], [5.15], [8.95], [8.96], [8.97], [1.05], [1.04],
                      [1.06]])
    val_y = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    bal = knn.select_knn(train_x, train_y, val_x, val_y, ks=[1, 3], metrics=["euclidean"],
                         criterion="balanced_accuracy")
    acc = knn.select_knn(train_x, train_y, val_x, val_y, ks=[1, 3], metrics=["euclidean"],
                         criterion="accuracy")
    assert bal.k == 1 and acc.k == 3
    assert acc.score == pytest.approx(0.9)


def test_select_knn_skips_k_above_the_training_set_and_fails_clearly_when_none_fit():
    x = np.array([[0.0], [1.0], [2.0]])
    y = np.array([0, 1, 1])
    sel = knn.select_knn(x, y, x, y, ks=[1, 3, 99])
    assert {r["k"] for r in sel.candidates} == {1, 3}
    with pytest.raises(ValueError, match="exceeds the 3 training embeddings"):
        knn.select_knn(x, y, x, y, ks=[5, 7])


@pytest.mark.parametrize("kwargs, message", [
    ({"metrics": ["manhattan"]}, "metrics must be among"),
    ({"criterion": "f1"}, "criterion must be one of"),
    ({"ks": [0, 1]}, "positive integers"),
    ({"weights": "inverse"}, "weights must be one of"),
])
def test_select_knn_rejects_bad_settings_with_a_clear_message(kwargs, message):
    x = np.array([[0.0], [1.0], [2.0]])
    y = np.array([0, 1, 1])
    with pytest.raises(ValueError, match=message):
        knn.select_knn(x, y, x, y, **kwargs)


def test_knn_predict_lists_the_nearest_training_images_nearest_first():
    index = knn.build_index(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]),
                            ["a.jpeg", "b.jpeg", "c.jpeg", "d.jpeg"],
                            class_names=["normal", "pneumonia"], k=3, metric="euclidean")
    pred, proba, files, dist = knn.knn_predict(index, np.array([[0.9], [2.6]]))
    assert files.tolist() == [["b.jpeg", "a.jpeg", "c.jpeg"], ["d.jpeg", "c.jpeg", "b.jpeg"]]
    np.testing.assert_allclose(dist, [[0.1, 0.9, 1.1], [0.4, 0.6, 1.6]], atol=1e-6)
    assert pred.tolist() == [0, 1]
    np.testing.assert_allclose(proba, [[2 / 3, 1 / 3], [1 / 3, 2 / 3]])


def test_knn_predict_keeps_probability_columns_of_classes_absent_from_train():
    index = knn.build_index(np.array([[0.0], [1.0], [5.0]]), np.array([0, 0, 2]),
                            ["a", "b", "c"], class_names=["normal", "bacteria", "virus"], k=1,
                            metric="euclidean")
    res = knn.knn_predict(index, np.array([4.0]))
    assert res.pred.tolist() == [2]
    np.testing.assert_allclose(res.proba, [[0.0, 0.0, 1.0]])


def test_knn_predict_rejects_embeddings_of_another_size():
    index = knn.build_index(np.zeros((4, 8)), np.array([0, 1, 0, 1]), list("abcd"),
                            class_names=["normal", "pneumonia"], k=1, metric="cosine",
                            info={"arch": "resnet18", "task": "binary"})
    with pytest.raises(ValueError, match=r"8-d, resnet18 binary"):
        knn.knn_predict(index, np.zeros((2, 16)))


def test_knn_index_round_trip_keeps_predictions_neighbours_and_settings(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    files = [f"train/img_{i}.jpeg" for i in range(30)]
    index = knn.build_index(x, y, files, class_names=["normal", "pneumonia"], k=5,
                            metric="cosine", weights="distance",
                            info={"task": "binary", "arch": "resnet18", "val_score": 0.9})
    path = knn.save_knn_index(index, tmp_path / "knn_index.npz")
    loaded = knn.load_knn_index(path)
    assert (loaded.k, loaded.metric, loaded.weights) == (5, "cosine", "distance")
    assert loaded.class_names == ["normal", "pneumonia"]
    assert loaded.info == {"task": "binary", "arch": "resnet18", "val_score": 0.9}
    q = rng.normal(size=(7, 6)).astype(np.float32)
    a, b = knn.knn_predict(index, q), knn.knn_predict(loaded, q)
    np.testing.assert_array_equal(a.pred, b.pred)
    np.testing.assert_array_equal(a.proba, b.proba)
    np.testing.assert_array_equal(a.neighbour_files, b.neighbour_files)
    np.testing.assert_array_equal(a.distances, b.distances)


def test_load_knn_index_names_the_missing_file_and_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the tsne_knn stage"):
        knn.load_knn_index(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, embeddings=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a pneumocxr k-NN index"):
        knn.load_knn_index(bad)


def test_classification_metrics_match_a_hand_computed_confusion_matrix():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    patients = np.array(["p0", "p0", "p1", "p2", "p3", "p4", "p5", "p6"])
    m = knn.classification_metrics(y_true, y_pred, ["normal", "bacteria", "virus"],
                                   groups=patients, n_boot=200, seed=0)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert m["per_class"]["normal"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["bacteria"]["precision"] == pytest.approx(1 / 2)
    ci = m["accuracy_ci95"]
    assert ci["ci_low"] <= 5 / 8 <= ci["ci_high"] and ci["n_valid"] == 200


def test_accuracy_difference_is_paired_and_signed():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    good = y.copy()
    bad = 1 - y
    d = knn.accuracy_difference(y, good, bad, n_boot=100, seed=0)
    assert d["value"] == 1.0 and d["ci_low"] == 1.0 and d["ci_high"] == 1.0


def test_jsonable_turns_nan_and_numpy_types_into_plain_json():
    out = knn.jsonable({"a": np.float32(0.5), "b": float("nan"), "c": np.arange(2),
                        "d": [np.int64(3), np.inf]})
    assert out == {"a": 0.5, "b": None, "c": [0, 1], "d": [3, None]}


def test_bootstrap_accuracy_statistic_equals_scikit_learns_accuracy():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    from sklearn.metrics import accuracy_score

    assert knn._accuracy(y, p) == pytest.approx(accuracy_score(y, p))
