"""Explainability: occlusion sensitivity, Grad-CAM, and checks that keep the maps honest.

- :class:`Occlusion` (captum-style ``attribute(inputs, targets, window=, stride=, baseline=,
  batch_size=)``) and :class:`GradCAM` (owns its hook; a context manager) explain a model
  on [0, 1] images (:class:`ImageModel` wraps a registry classifier with its normalization);
  targets are small callables (:class:`ClassifierOutputTarget`,
  :class:`ClassifierOutputSoftmaxTarget`).
- :mod:`.faithfulness`: deletion / insertion AUC, model randomisation, rank correlation.
- :mod:`.lungmask`: an approximate lung-field mask and the share of attribution inside it.
- :mod:`.shortcut`: accuracy and AUROC with the image border blanked.
- :func:`run_explain` (:mod:`.pipeline`): the ``explain`` pipeline stage.
"""

from .faithfulness import (deletion_insertion, random_attribution, randomized_model,
                           rank_correlation)
from .gradcam import GradCAM, normalize_map
from .lungmask import LungMaskConfig, adjust_mask, attribution_share, lung_mask
from .occlusion import Occlusion, window_starts
from .pipeline import run_explain, select_images
from .shortcut import blank_border, border_probe
from .targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget, ImageModel

__all__ = [
    "ClassifierOutputSoftmaxTarget", "ClassifierOutputTarget", "GradCAM", "ImageModel",
    "LungMaskConfig", "Occlusion", "adjust_mask", "attribution_share", "blank_border",
    "border_probe", "deletion_insertion", "lung_mask", "normalize_map", "random_attribution",
    "randomized_model", "rank_correlation", "run_explain", "select_images", "window_starts",
]
