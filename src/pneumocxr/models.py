"""Classifier registry: build ResNet-18, VGG16 or AlexNet by name, with one forward API.

Every model is a :class:`Classifier` that wraps a torchvision network split into four parts::

    x (N, in_chans, H, W), normalised: (image / 255 - mean) / std
      -> trunk        forward_features(x): unpooled feature map (N, C, h, w)
      -> pool         global pooling + flatten
      -> pre_logits   identity (ResNet) or the fully connected layers before the last (VGG, AlexNet)
      -> fc           the last linear layer; forward_head(f, pre_logits=True) stops before it

so an embedding is ``model.forward_head(model.forward_features(x), pre_logits=True)`` for every
backbone (``model.num_features`` wide). As in timm, normalization happens outside the model:
its constants travel with the weights (``best.pt`` ``meta["normalization"]``;
:func:`default_normalization` for a new model) and :func:`normalize` applies them.

Grayscale without tripling memory: the first convolution takes ``in_chans`` (default 1)
channels. ImageNet weights are adapted by summing the RGB kernels (a gray image replicated to
RGB gives the same response); from scratch, the stem keeps the constructor's initialisation of
its first input channel(s).

``weights`` is ``"none"`` (from scratch), ``"imagenet"`` (torchvision's weights API, cached by
``torch.hub`` under ``$TORCH_HOME/hub/checkpoints``) or the path of a ``best.pt`` written by
:mod:`pneumocxr.train` for the same architecture; when its class count differs (binary weights
starting the 3-class model) the trunk is kept and a new head is created.

A *folded* classifier (``train.joint_head``) is a three-class network read as a binary one:
``fold`` groups its head's outputs into classes, and each class's logit is the log-sum-exp of
its group's, so its softmax is the sum of the group's probabilities (p(pneumonia) =
p(bacteria) + p(virus)). Its ``best.pt`` is the three-class weights with ``meta["fold"]``
and ``meta["head_classes"]``; embeddings are the three-class network's.

``fc`` is a linear layer, or with ``cosine_head`` > 0 (``train.cosine_head``) a
:class:`CosineHead`: the scaled cosine between the embedding and each class's weight vector,
so the head reads the embedding's direction only, as a cosine k-NN does. ``meta["cosine_head"]``
records the scale (0 or absent: linear).
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .errors import InputError, RunError
from .checkpoint import load_checkpoint
from .utils import resolve_device

log = logging.getLogger(__name__)

# A gray image replicated to RGB and normalised with ImageNet's per-channel constants is close
# to one channel normalised with their means (timm uses the same pair for 1-channel models).
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RunError):
    """Pretrained weights could not be downloaded or read from the torch hub cache."""


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about an architecture.

    Attributes:
        name: registry name (also torchvision's constructor name).
        min_input_size: smallest image side the network accepts; smaller input is a ValueError.
        stem: dotted path of the first convolution inside the torchvision model.
        description: one line for listings and error messages.
    """

    name: str
    min_input_size: int
    stem: str
    description: str


@dataclass
class _Parts:
    trunk: nn.Module
    pool: nn.Module
    pre_logits: nn.Module
    fc: nn.Linear


class CosineHead(nn.Module):
    """``scale * cos(w_c, f)`` for each class ``c``: the L2-normalised embedding times the
    L2-normalised class weights (NormFace, Wang et al. 2017), no bias. The logits are bounded by
    ``scale``; the class is decided by the embedding's direction, not its length."""

    def __init__(self, in_features: int, out_features: int, scale: float):
        super().__init__()
        if not scale > 0:
            raise InputError(f"a cosine head needs a scale above 0, got {scale}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.weight, dim=1)
        return F.linear(F.normalize(x, dim=1), w.to(x.dtype)) * self.scale.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scale={float(self.scale):g}")


_REGISTRY: dict[str, tuple[ModelSpec, Callable[[nn.Module], _Parts]]] = {}


def register_model(spec: ModelSpec) -> Callable:
    """Register ``split(torchvision_model) -> _Parts`` under ``spec.name``."""

    def wrap(split: Callable[[nn.Module], _Parts]) -> Callable[[nn.Module], _Parts]:
        if spec.name in _REGISTRY:
            raise InputError(f"model {spec.name!r} is already registered")
        _REGISTRY[spec.name] = (spec, split)
        return split

    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise InputError(f"unknown architecture {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name][0]


def check_input_size(name: str, size: int | tuple[int, int]) -> None:
    """Raise ValueError when an image of ``size`` pixels is too small for architecture ``name``."""
    spec = get_model_spec(name)
    h, w = (size, size) if isinstance(size, int) else size
    if min(h, w) < spec.min_input_size:
        raise InputError(
            f"{name} needs input of at least {spec.min_input_size}x{spec.min_input_size} pixels, "
            f"got {h}x{w}; raise prepare.crop (or train.input_size) or choose another architecture"
        )


@register_model(ModelSpec("resnet18", 32, "conv1",
                          "ResNet-18 (torchvision); stride 32, min input 32 px"))
def _split_resnet(m: nn.Module) -> _Parts:
    trunk = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
    return _Parts(trunk, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), nn.Identity(), m.fc)


@register_model(ModelSpec("vgg16", 32, "features.0",
                          "VGG16 (torchvision, no batch norm); five 2x2 poolings, min input 32 px"))
def _split_vgg(m: nn.Module) -> _Parts:
    return _Parts(m.features, nn.Sequential(m.avgpool, nn.Flatten(1)), m.classifier[:-1],
                  m.classifier[-1])


@register_model(ModelSpec("alexnet", 63, "features.0",
                          "AlexNet (torchvision); 11x11 stride-4 stem and three 3x3 poolings, "
                          "min input 63 px"))
def _split_alexnet(m: nn.Module) -> _Parts:
    return _Parts(m.features, nn.Sequential(m.avgpool, nn.Flatten(1)), m.classifier[:-1],
                  m.classifier[-1])


class Classifier(nn.Module):
    """A registry model: ``forward = forward_head(forward_features(x))``.

    Attributes:
        arch: registry name. in_chans: input channels. num_classes: outputs of ``fc``.
        num_features: width of the pre-logits embedding. min_input_size: smallest image side.

    Input is normalised (see :func:`normalize`); ``forward_features`` checks its shape.
    ``fold`` (None, or a group of ``fc`` outputs per class) makes it a folded classifier:
    ``logits`` returns one log-sum-exp per group.
    """

    def __init__(self, arch: str, parts: _Parts, in_chans: int, min_input_size: int):
        super().__init__()
        self.arch = arch
        self.in_chans = in_chans
        self.min_input_size = min_input_size
        self.trunk = parts.trunk
        self.pool = parts.pool
        self.pre_logits = parts.pre_logits
        self.fc = parts.fc
        self.num_features = parts.fc.in_features
        self.fold: tuple[tuple[int, ...], ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.fold) if self.fold is not None else self.fc.out_features

    def set_fold(self, fold: Sequence[Sequence[int]] | None) -> None:
        """Read the head's outputs in groups (see :func:`check_fold`); None undoes it."""
        self.fold = None if fold is None else check_fold(fold, self.fc.out_features)

    def logits(self, pre: torch.Tensor) -> torch.Tensor:
        """Class logits of pre-logits embeddings ``pre``: ``fc``, folded when ``fold`` is set."""
        z = self.fc(pre)
        if self.fold is None:
            return z
        return torch.stack([torch.logsumexp(z[:, list(g)], dim=1) for g in self.fold], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise InputError(f"{self.arch} expects input (N, {self.in_chans}, H, W), "
                             f"got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_input_size:
            raise InputError(
                f"{self.arch} needs input of at least {self.min_input_size}x"
                f"{self.min_input_size} pixels, got {x.shape[-2]}x{x.shape[-1]}; raise "
                "prepare.crop (or train.input_size) or choose another architecture")
        return self.trunk(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.pool(x))
        return x if pre_logits else self.logits(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def cosine_scale(self) -> float:
        """The scale of a :class:`CosineHead` ``fc``; 0.0 for a linear one."""
        return float(self.fc.scale) if isinstance(self.fc, CosineHead) else 0.0

    def reset_classifier(self, num_classes: int, cosine_scale: float | None = None) -> None:
        """Replace ``fc`` by a freshly initialised ``num_features -> num_classes`` layer:
        linear when ``cosine_scale`` is 0, a :class:`CosineHead` of that scale when above, the
        current kind when None."""
        device = self.fc.weight.device
        scale = self.cosine_scale if cosine_scale is None else float(cosine_scale)
        self.fc = (CosineHead(self.num_features, num_classes, scale) if scale > 0
                   else nn.Linear(self.num_features, num_classes)).to(device)
        self.fold = None

    def extra_repr(self) -> str:
        return (f"arch={self.arch!r}, in_chans={self.in_chans}, num_classes={self.num_classes}, "
                f"num_features={self.num_features}, min_input_size={self.min_input_size}"
                + (f", fold={self.fold}" if self.fold is not None else ""))


def check_fold(fold: Sequence[Sequence[int]], head_outputs: int) -> tuple[tuple[int, ...], ...]:
    """``fold`` as tuples, checked: at least two non-empty groups that together hold each of
    the ``head_outputs`` indices exactly once."""
    groups = tuple(tuple(int(i) for i in g) for g in fold)
    flat = sorted(i for g in groups for i in g)
    if len(groups) < 2 or any(not g for g in groups) or flat != list(range(head_outputs)):
        raise InputError(f"fold {[list(g) for g in groups]} must split the {head_outputs} head "
                         "outputs into at least two non-empty groups, each output in one group")
    return groups


def head_scale(meta: Mapping[str, Any]) -> float:
    """The cosine-head scale of a checkpoint (``meta["cosine_head"]``); 0.0 for a linear head."""
    return float(meta.get("cosine_head") or 0.0)


def head_classes(meta: Mapping[str, Any]) -> list[str]:
    """The classes of a checkpoint's ``fc`` layer: ``meta["head_classes"]`` for a folded
    classifier, its ``class_names`` otherwise."""
    return list(meta.get("head_classes") or meta["class_names"])


def default_normalization(in_chans: int = 1) -> dict[str, list[float]]:
    """Normalization of a new model: ImageNet's constants (RGB) or their gray equivalent."""
    if in_chans == 3:
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return {"mean": list(GRAY_MEAN) * in_chans, "std": list(GRAY_STD) * in_chans}


def equalize(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Histogram equalization of each image and channel of ``x`` (N, C, H, W) in [0, 1]: every
    value becomes the mid-rank of its bin among the image's ``bins`` levels, in (0, 1). The
    result is the same under any increasing map of the intensities (exposure, contrast,
    gamma, window and level) that keeps the levels apart; deterministic (a histogram, no sort)."""
    n, c, h, w = x.shape
    q = (x.detach().float().clamp(0, 1) * (bins - 1)).round().long().reshape(n * c, h * w)
    offset = torch.arange(n * c, device=x.device).unsqueeze(1) * bins
    counts = torch.bincount((q + offset).reshape(-1), minlength=n * c * bins)
    counts = counts.reshape(n * c, bins).to(torch.float64)
    below = torch.cumsum(counts, dim=1) - counts
    mid = (below + counts / 2) / float(h * w)
    return mid.gather(1, q).reshape(n, c, h, w).to(x.dtype)


def normalize(x: torch.Tensor, normalization: dict[str, Any]) -> torch.Tensor:
    """``(x - mean) / std`` per channel, for ``x`` (N, C, H, W) in [0, 1]; with
    ``normalization["equalize"]`` true, of the :func:`equalize`-d image (``train.equalize``)."""
    if normalization.get("equalize"):
        x = equalize(x)
    mean = torch.as_tensor(normalization["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(normalization["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, module)


def adapt_stem_weight(weight: torch.Tensor, in_chans: int, pretrained: bool) -> torch.Tensor:
    """First-conv kernel for ``in_chans`` inputs from an RGB kernel (out, 3, k, k).

    Pretrained: ``in_chans == 1`` sums the RGB kernels; more channels repeat them cyclically
    scaled by ``3 / in_chans`` (the response to a replicated gray image is unchanged).
    From scratch: the constructor's initialisation of the first ``in_chans`` input channels
    (cycled when more than 3 are asked for).
    """
    if in_chans == weight.shape[1]:
        return weight.clone()
    if pretrained:
        if in_chans == 1:
            return weight.sum(dim=1, keepdim=True)
        reps = -(-in_chans // weight.shape[1])
        return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans].clone()


def _adapt_stem(model: nn.Module, spec: ModelSpec, in_chans: int, pretrained: bool) -> None:
    conv = model.get_submodule(spec.stem)
    if in_chans == conv.in_channels:
        return
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_stem_weight(conv.weight, in_chans, pretrained))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_submodule(model, spec.stem, new)


def imagenet_weights_file(name: str) -> Path:
    """Where ``torch.hub`` looks for (and caches) the ImageNet weights of ``name``."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _imagenet_state_dict(name: str, progress: bool) -> dict[str, torch.Tensor]:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    target = imagenet_weights_file(name)
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu",
                                                  progress=progress, check_hash=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} ({weights}) could not be loaded: {err}. Without "
            f"internet, download {weights.url} elsewhere and place it as {target} (the torch "
            "hub cache; $TORCH_HOME moves it), or set weights: none to train from scratch"
        ) from None


def _build(name: str, num_classes: int, in_chans: int, pretrained: bool,
           progress: bool, cosine_scale: float = 0.0) -> Classifier:
    spec, split = _REGISTRY[name]
    if pretrained:
        net = torchvision.models.get_model(name, weights=None)
        net.load_state_dict(_imagenet_state_dict(name, progress))
    else:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    _adapt_stem(net, spec, in_chans, pretrained)
    model = Classifier(name, split(net), in_chans, spec.min_input_size)
    if model.num_classes != num_classes or cosine_scale > 0:
        model.reset_classifier(num_classes, cosine_scale)
    return model


def create_model(name: str, num_classes: int = 2, in_chans: int = 1,
                 weights: str | Path | None = "none", *, progress: bool = False,
                 cosine_head: float = 0.0) -> Classifier:
    """Build architecture ``name`` with a ``num_classes``-way head for ``in_chans``-channel input.

    Args:
        weights: ``"none"`` or None (random init; seed torch first), ``"imagenet"`` (torchvision
            weights through the torch hub cache; :class:`WeightsUnavailableError` names the file
            to place there when offline) or the path of a ``best.pt`` of the same architecture
            and ``in_chans`` (a differing class count gets a new, randomly initialised head;
            use that checkpoint's ``meta["normalization"]`` for its input).
        progress: show the download progress bar.
        cosine_head: 0 for a linear head, else the scale of a :class:`CosineHead`. A
            checkpoint's head of another kind or scale is replaced by a new one of this kind.

    Raises:
        ValueError: unknown architecture, ``num_classes < 2``, ``in_chans < 1``, or a checkpoint
            of another architecture or channel count.
    """
    get_model_spec(name)
    if int(num_classes) < 2:
        raise InputError(f"num_classes must be at least 2, got {num_classes}")
    if int(in_chans) < 1:
        raise InputError(f"in_chans must be at least 1, got {in_chans}")
    weights = "none" if weights is None else str(weights)
    cosine_head = float(cosine_head)
    if cosine_head < 0:
        raise InputError(f"cosine_head must be 0 (linear head) or above, got {cosine_head}")
    if weights == "none":
        return _build(name, num_classes, in_chans, False, progress, cosine_head)
    if weights == "imagenet":
        return _build(name, num_classes, in_chans, True, progress, cosine_head)
    ckpt = load_checkpoint(weights, kind="classifier")
    meta = ckpt["meta"]
    if meta.get("arch") != name:
        raise InputError(
            f"{weights}: checkpoint of architecture {meta.get('arch')!r} cannot initialise "
            f"{name!r}; use the {name} checkpoint (models/<task>/{name}/best.pt)")
    if int(meta.get("in_chans", -1)) != in_chans:
        raise InputError(f"{weights}: checkpoint takes {meta.get('in_chans')} input channels, "
                         f"the model {in_chans}")
    n_ckpt = len(head_classes(meta))
    model = _build(name, n_ckpt, in_chans, False, progress, head_scale(meta))
    model.load_state_dict(ckpt["model"])
    if n_ckpt != num_classes or head_scale(meta) != cosine_head:
        log.info("%s: kept the %s trunk of %s (%d classes, %s head); new %d-way %s head", name,
                 name, weights, n_ckpt, _head_name(head_scale(meta)), num_classes,
                 _head_name(cosine_head))
        model.reset_classifier(num_classes, cosine_head)
    return model


def _head_name(scale: float) -> str:
    return f"cosine (scale {scale:g})" if scale > 0 else "linear"


def load_model(path: str | Path, *, arch: str | None = None,
               class_names: list[str] | None = None) -> tuple[Classifier, dict[str, Any]]:
    """Load a ``best.pt`` for inference: ``(model in eval mode on CPU, meta)``.

    ``arch`` / ``class_names``, when given, must match the checkpoint (ValueError otherwise),
    so a 3-class checkpoint cannot be evaluated as a binary one by mistake.
    """
    ckpt = load_checkpoint(path, kind="classifier")
    meta = ckpt["meta"]
    for key in ("arch", "class_names", "in_chans"):
        if key not in meta:
            raise InputError(f"{path}: checkpoint metadata lacks {key!r}; retrain to rewrite it")
    if arch is not None and meta["arch"] != arch:
        raise InputError(f"{path}: checkpoint is a {meta['arch']!r} model, expected {arch!r}")
    if class_names is not None and list(meta["class_names"]) != list(class_names):
        raise InputError(f"{path}: checkpoint classes {meta['class_names']} differ from the "
                         f"task's {list(class_names)}; use the checkpoint of this task")
    model = _build(meta["arch"], len(head_classes(meta)), int(meta["in_chans"]), False, False,
                   head_scale(meta))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not fit a {meta['arch']} with a "
                         f"{_head_name(head_scale(meta))} head ({err})") from None
    if meta.get("fold") is not None:
        try:
            model.set_fold(meta["fold"])
        except InputError as err:
            raise InputError(f"{path}: {err}") from None
        if len(model.fold) != len(meta["class_names"]):
            raise InputError(f"{path}: fold has {len(model.fold)} groups for the "
                             f"{len(meta['class_names'])} classes {meta['class_names']}")
    model.eval()
    return model, meta


# --------------------------------------------------------------------------------------------
# The anomaly detector's network: a convolutional autoencoder of normal images
# --------------------------------------------------------------------------------------------


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder (optionally variational) for 1-channel square images.

    Encoder: ``len(channels)`` blocks of Conv2d(4x4, stride 2) + BatchNorm + LeakyReLU, each
    halving the side, then a linear map to a ``latent_dim`` code. Decoder: the mirror image with
    ConvTranspose2d(4x4, stride 2) blocks, ending in a sigmoid (pixels in [0, 1]).

    Args:
        input_size: side of the (square) input; must be divisible by ``2 ** len(channels)``.
        channels: output channels of the encoder blocks (the depth is their number).
        latent_dim: size of the bottleneck code.
        in_chans: image channels (1 for X-rays).
        variational: encode a Gaussian (mean, log-variance) and sample from it while training
            (a VAE); at evaluation the mean is decoded.
    """

    def __init__(self, input_size: int = 128, channels: Sequence[int] = (16, 32, 64, 128),
                 latent_dim: int = 128, in_chans: int = 1, variational: bool = False):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels:
            raise InputError("anomaly.channels must list at least one encoder block")
        depth = len(channels)
        if input_size % (2 ** depth):
            raise InputError(
                f"anomaly.input_size={input_size} is not divisible by 2**depth={2 ** depth} "
                f"(depth = len(anomaly.channels) = {depth}); pick a multiple of {2 ** depth}"
            )
        self.input_size = int(input_size)
        self.channels = channels
        self.latent_dim = int(latent_dim)
        self.in_chans = int(in_chans)
        self.variational = bool(variational)
        self.bottom = input_size // 2 ** depth
        flat = channels[-1] * self.bottom ** 2

        enc: list[nn.Module] = []
        c_in = in_chans
        for c in channels:
            enc.append(nn.Sequential(
                nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True)))
            c_in = c
        self.encoder = nn.ModuleList(enc)
        self.to_latent = nn.Linear(flat, latent_dim * (2 if variational else 1))
        self.from_latent = nn.Linear(latent_dim, flat)
        dec: list[nn.Module] = []
        rev = channels[::-1]
        for c, c_out in zip(rev[:-1], rev[1:]):
            dec.append(nn.Sequential(
                nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)))
        dec.append(nn.ConvTranspose2d(rev[-1], in_chans, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(*dec)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (stored in checkpoints to rebuild the model)."""
        return {"input_size": self.input_size, "channels": list(self.channels),
                "latent_dim": self.latent_dim, "in_chans": self.in_chans,
                "variational": self.variational}

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every encoder block (shallow to deep)."""
        feats = []
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        return feats

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mean, log_variance)`` of the code; ``log_variance`` is None for a plain AE."""
        h = self.forward_features(x)[-1].flatten(1)
        z = self.to_latent(h)
        if self.variational:
            mu, logvar = z.chunk(2, dim=1)
            return mu, logvar.clamp(-10.0, 10.0)
        return z, None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(-1, self.channels[-1], self.bottom, self.bottom)
        return torch.sigmoid(self.decoder(F.relu(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` (a VAE samples its code while training)."""
        mu, logvar = self.encode(x)
        z = mu
        if self.variational and self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z)


def autoencoder_input(images: np.ndarray, input_size: int) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, input_size, input_size) in [0, 1] (area-resized)."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise InputError(f"expected grayscale images of shape (N, H, W), got {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0).unsqueeze(1)
    if x.shape[-1] != input_size or x.shape[-2] != input_size:
        if x.shape[-1] != x.shape[-2]:
            raise InputError(f"expected square images, got {tuple(x.shape[-2:])}")
        mode = "area" if x.shape[-1] > input_size else "bilinear"
        x = F.interpolate(x, size=(input_size, input_size), mode=mode,
                          **({} if mode == "area" else {"align_corners": False}))
    return x.clamp_(0.0, 1.0)


def build_autoencoder(meta: Mapping[str, Any]) -> ConvAutoencoder:
    """The autoencoder described by a checkpoint's ``meta["model"]``."""
    cfg = meta["model"]
    return ConvAutoencoder(cfg["input_size"], cfg["channels"], cfg["latent_dim"],
                           cfg.get("in_chans", 1), cfg.get("variational", False))


def load_autoencoder(path: str | Path, device: str = "cpu") -> tuple[ConvAutoencoder, dict]:
    """Load the anomaly detector's ``best.pt`` (``train_autoencoder``) -> (model in eval mode,
    meta)."""
    ckpt = load_checkpoint(path, kind="autoencoder")
    meta = ckpt["meta"]
    model = build_autoencoder(meta)
    model.load_state_dict(ckpt["model"])
    return model.to(resolve_device(device)).eval(), meta
