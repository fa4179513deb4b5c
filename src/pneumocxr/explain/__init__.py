"""Explainability: occlusion sensitivity, Grad-CAM, and checks that keep the maps honest.

- :class:`Occlusion` (captum-style ``attribute(inputs, targets, window=, stride=, baseline=,
  batch_size=)``) and :class:`GradCAM` (owns its hook; a context manager) explain a model
  on [0, 1] images (:class:`ImageModel` wraps a registry classifier with its normalization);
  targets are small callables (:class:`ClassifierOutputTarget`,
  :class:`ClassifierOutputSoftmaxTarget`).
- :mod:`.faithfulness`: deletion / insertion AUC, model randomisation, rank correlation.
- :mod:`.lungmask`: an approximate lung-field mask and the share of attribution inside it.
- :mod:`.shortcut`: accuracy and AUROC with the image border blanked.
- :func:`~.pipeline.run_explain`: the ``explain`` pipeline stage.

Import the submodules themselves (``from pneumocxr.explain.occlusion import Occlusion``): this
package file imports nothing, so a stage that uses one of them does not depend on the rest.
"""
