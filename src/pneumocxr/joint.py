"""The joint head (``train.joint_head``): the binary model as the three-class network folded.

With the joint head one normal / bacteria / virus network is trained (the ``train`` stage of
the three-class task, from ``train.weights`` with the binary recipe) and the binary model is
the same weights read in two groups, normal | bacteria + virus::

    logit_normal = z_normal        logit_pneumonia = log(exp(z_bacteria) + exp(z_virus))

so its softmax gives p(pneumonia) = p(bacteria) + p(virus) exactly, and every later stage
(calibrate, evaluate, embed, explain, predict, export) reads it as any binary ``best.pt``.
:func:`run_fold` is the ``fold_binary`` stage: the folded checkpoint and its val predictions
(the input of ``calibrate``), from the three-class run's, with no second pass over the images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from sklearn.metrics import roc_auc_score

from . import CLASS_NAMES_3, CLASS_NAMES_BINARY
from .checkpoint import file_sha256, load_checkpoint, save_checkpoint
from .errors import InputError
from .logits import (Predictions, fold_logits, probabilities, read_predictions,
                     write_predictions_table)

log = logging.getLogger(__name__)

# class 0 of both tasks is normal; bacteria and virus are the two kinds of pneumonia
JOINT_FOLD: tuple[tuple[int, ...], ...] = ((0,), (1, 2))


def fold_labels(labels: np.ndarray) -> np.ndarray:
    """Three-class labels (normal 0, bacteria 1, virus 2) -> binary (normal 0, pneumonia 1)."""
    return (np.asarray(labels) > 0).astype(np.int64)


def run_fold(joint_model: str | Path, joint_val_predictions: str | Path,
             outputs: Mapping[str, str | Path]) -> dict[str, Any]:
    """The ``fold_binary`` stage: ``outputs["model"]`` (the binary ``best.pt``: the joint
    network's weights, ``meta["fold"]`` and ``meta["head_classes"]``) and
    ``outputs["val_predictions"]`` (its val logits, folded). Returns the folded val metrics."""
    ckpt = load_checkpoint(joint_model, kind="classifier")
    meta = ckpt["meta"]
    if meta.get("fold") is not None or list(meta.get("class_names", [])) != list(CLASS_NAMES_3):
        raise InputError(f"{joint_model}: the joint head folds a three-class checkpoint "
                         f"({list(CLASS_NAMES_3)}, not folded); this one has classes "
                         f"{meta.get('class_names')}{' and is folded' if meta.get('fold') else ''}")
    pred = read_predictions(joint_val_predictions, class_names=CLASS_NAMES_3)
    folded = Predictions(fold_logits(pred.logits, JOINT_FOLD), fold_labels(pred.labels),
                         CLASS_NAMES_BINARY, pred.files, pred.patients)
    probs = probabilities(folded.logits)
    val = {"accuracy": float((probs.argmax(1) == folded.labels).mean()),
           "auroc": float(roc_auc_score(folded.labels, probs[:, 1]))}
    binary_meta = {
        **meta, "task": "binary", "class_names": list(CLASS_NAMES_BINARY),
        "head_classes": list(meta["class_names"]), "fold": [list(g) for g in JOINT_FOLD],
        "folded_from": str(joint_model), "folded_from_sha256": file_sha256(joint_model),
        "val": val, "joint_val": meta.get("val"),
    }
    save_checkpoint(outputs["model"], ckpt["model"], binary_meta, kind="classifier")
    write_predictions_table(outputs["val_predictions"], folded)
    log.info("folded %s (normal | bacteria + virus) -> %s: val accuracy %.4f, AUROC %.4f",
             joint_model, outputs["model"], val["accuracy"], val["auroc"])
    return val
