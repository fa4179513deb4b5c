"""Grad-CAM (Selvaraju et al., 2017) on a classifier's last convolutional block.

For a target score ``y`` and the activations ``A`` (N, K, h, w) of the target layer::

    alpha_k = mean over (i, j) of d y / d A_k(i, j)
    CAM     = ReLU( sum_k alpha_k A_k )            upsampled (bilinear) to the input size

The default layer is the classifier's trunk, i.e. the output of ``forward_features``: the last
convolutional block (ResNet ``layer4``; VGG/AlexNet ``features`` ending in their last pooling).
Maps are returned unnormalised (their scale is comparable within one model and target); use
:func:`normalize_map` for display.

The explainer owns one forward hook on the layer and removes it in :meth:`GradCAM.release`;
use it as a context manager so the hook never outlives the explanation::

    with GradCAM(ImageModel(classifier, meta["normalization"])) as cam:
        maps = cam(x, targets=[ClassifierOutputTarget(1)] * len(x))
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .targets import ClassifierOutputTarget, ImageModel, Target, model_device, resolve_targets


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block: ``trunk`` of a registry classifier (inside ImageModel)."""
    inner = model.model if isinstance(model, ImageModel) else model
    trunk = getattr(inner, "trunk", None)
    if not isinstance(trunk, nn.Module):
        raise InputError(f"{type(inner).__name__} has no `trunk`; pass target_layer= (the module "
                         "whose output is the last convolutional feature map)")
    return trunk


class GradCAM:
    """Grad-CAM maps of ``model`` (images in [0, 1] -> logits) at ``target_layer``.

    Args:
        model: the model to explain (eval mode is set during each call and then restored).
        target_layer: module whose output (N, K, h, w) is weighted; default
            :func:`default_target_layer`.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module | None = None):
        self.model = model
        if target_layer is None:
            target_layer = default_target_layer(model)
        self.target_layer = target_layer
        self._activation: torch.Tensor | None = None
        self._handle = self.target_layer.register_forward_hook(self._save_activation)

    def _save_activation(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise InputError(f"Grad-CAM target layer {type(module).__name__} must output a "
                             f"(N, K, h, w) tensor, got {getattr(output, 'shape', type(output))}")
        self._activation = output

    @property
    def active(self) -> bool:
        """True until :meth:`release` has removed the hook."""
        return self._handle is not None

    def release(self) -> None:
        """Remove the forward hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._activation = None

    def __enter__(self) -> "GradCAM":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __call__(self, inputs: torch.Tensor,
                 targets: Target | Sequence[Target] | None = None) -> torch.Tensor:
        """Maps (N, H, W) >= 0 for images ``inputs`` (N, C, H, W).

        ``targets``: one callable per image, one for all, or None (the logit of each image's
        predicted class, as in pytorch-grad-cam).
        """
        if self._handle is None:
            raise RuntimeError("this GradCAM was released; create a new one (use it as a "
                               "context manager: `with GradCAM(model) as cam:`)")
        if inputs.ndim != 4:
            raise InputError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
        was_training = self.model.training
        self.model.eval()
        x = inputs.detach().to(model_device(self.model), torch.float32).requires_grad_(True)
        try:
            with torch.enable_grad():
                out = self.model(x)
                act = self._activation
                if act is None:
                    raise RuntimeError("the Grad-CAM target layer did not run in the forward "
                                       "pass; pass a target_layer the model uses")
                per_image = resolve_targets(targets, len(x), ClassifierOutputTarget,
                                            out.argmax(1))
                score = torch.stack([t(out[i:i + 1]).reshape(()) for i, t in
                                     enumerate(per_image)]).sum()
                # images are independent in eval mode, so d(sum)/dA holds each image's gradient
                grad, = torch.autograd.grad(score, act)
            weights = grad.mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((weights * act).sum(dim=1, keepdim=True)).detach()
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        finally:
            self._activation = None
            self.model.train(was_training)
        return cam[:, 0].clamp_min(0.0).cpu()


def normalize_map(a: torch.Tensor) -> torch.Tensor:
    """Scale each map (N, H, W) to [0, 1] by its own maximum (an all-zero map stays zero)."""
    peak = a.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (a / peak).clamp(0.0, 1.0)
