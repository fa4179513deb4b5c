"""Typed settings: frozen dataclasses built from validated params, one per params section.

The schema (:mod:`pneumocxr.config`) is the only place that declares a default, a type or a
range; these classes declare none. A stage builds them from the keys it was given, e.g.::

    TrainSettings.for_task(io.params["train"], "three_class")
    ScoreSettings.from_params(io.params["anomaly"]["score"])

and a library caller that sets a few keys gets the schema's defaults for the rest::

    TrainSettings.for_task({"epochs": 2}, "binary")

A class reads exactly the keys of its section (a missing key is filled from the schema, an
unknown one is a :class:`~pneumocxr.config.ParamsError` naming it), so a stage that was given
fewer keys than it reads cannot run on a default by accident: its rule lists the keys.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Mapping, TypeVar

from .config import ARCH_OVERRIDES, TASK_OVERRIDES, complete, deep_merge

T = TypeVar("T", bound="Section")


def _convert(value: Any, hint: Any) -> Any:
    """Lists become tuples (frozen, hashable); nested sections become their dataclass."""
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return hint._build(value)
    if isinstance(value, list):
        return tuple(_convert(v, None) for v in value)
    return value


class Section:
    """Base of the settings classes: ``SECTION`` is the dotted params path they read."""

    SECTION: ClassVar[str] = ""

    @classmethod
    def _build(cls: type[T], values: Mapping[str, Any]) -> T:
        hints = typing.get_type_hints(cls)
        kwargs = {f.name: _convert(values[f.name], hints.get(f.name))
                  for f in dataclasses.fields(cls)}
        return cls(**kwargs)

    @classmethod
    def from_params(cls: type[T], values: Mapping[str, Any] | T | None = None) -> T:
        """From the section's params (validated, the schema's defaults filled in)."""
        if isinstance(values, cls):
            return values
        if isinstance(values, Section):  # e.g. AugmentSettings -> the Augment that runs it
            values = values.as_dict()
        return cls._build(complete(cls.SECTION, values or {}))

    def as_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), e.g. for a checkpoint's metadata or a cache key."""
        def plain(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v
        return plain(asdict(self))


# ----------------------------------------------------------------------------- classifiers


@dataclass(frozen=True)
class AugmentSettings(Section):
    """``train.augment``: random resized crop, flip, rotation, brightness and contrast, and
    the acquisition jitter (gamma, blur, noise), random erasing."""

    SECTION: ClassVar[str] = "train.augment"
    scale: tuple[float, float]
    ratio: tuple[float, float]
    hflip: float
    rotation: float
    brightness: float
    contrast: float
    gamma: float
    blur: float
    noise: float
    erase: float


@dataclass(frozen=True)
class TrainSettings(Section):
    """The training recipe of one task: ``train`` with ``train.<task>`` merged over it."""

    SECTION: ClassVar[str] = "train"
    input_size: int | None
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    warmup: float
    step_size: int
    step_gamma: float
    loss: str
    focal_alpha: float
    focal_gamma: float
    class_weights: str
    label_smoothing: float
    balanced_sampler: bool
    augment: AugmentSettings
    precision: str
    channels_last: bool
    ema: float
    mixup: float
    equalize: bool
    cosine_head: float
    progressive_scale: float
    progressive_epochs: float
    eval_batch_size: int
    select: str

    @classmethod
    def for_task(cls, train: Mapping[str, Any] | TrainSettings | None, task: str,
                 arch: str | None = None) -> TrainSettings:
        """The recipe of ``task`` (``binary`` or ``three_class``) from the ``train`` section
        (or the part of it a stage was given: the recipe keys and ``train.<task>``), with
        ``train.per_arch.<arch>`` over it when ``arch`` is given and has overrides. With
        ``train.joint_head`` the three-class network is the one model trained from scratch, so
        it takes the binary recipe: ``train.binary``, not ``train.three_class``."""
        if isinstance(train, TrainSettings):
            return train
        if task not in TASK_OVERRIDES:
            from .errors import InputError
            raise InputError(f"unknown task {task!r}; expected one of {list(TASK_OVERRIDES)}")
        section = complete("train", train or {})
        recipe_of = "binary" if task == "three_class" and section["joint_head"] else task
        merged = deep_merge(section, section[recipe_of])
        if arch is not None:
            merged = deep_merge(merged, section[ARCH_OVERRIDES].get(arch) or {})
        return cls._build(merged)


@dataclass(frozen=True)
class CalibrateSettings(Section):
    """``calibrate``: the rule of the operating threshold, fitted on val predictions."""

    SECTION: ClassVar[str] = "calibrate"
    rule: str
    target_sensitivity: float
    tolerance: float


@dataclass(frozen=True)
class EvaluateSettings(Section):
    """``evaluate``: bootstrap, calibration bins, batch size and the splits reported."""

    SECTION: ClassVar[str] = "evaluate"
    n_boot: int
    ece_bins: int
    batch_size: int
    splits: tuple[str, ...]


# ----------------------------------------------------------------------------- embeddings


@dataclass(frozen=True)
class TsneSettings(Section):
    SECTION: ClassVar[str] = "embed.tsne"
    perplexity: float
    max_iter: int
    max_points: int
    train_points: int
    metric: str


@dataclass(frozen=True)
class KnnSettings(Section):
    SECTION: ClassVar[str] = "embed.knn"
    k: tuple[int, ...]
    metrics: tuple[str, ...]
    weights: str
    select_by: str


# ----------------------------------------------------------------------------- anomaly


ANOMALY_SECTIONS = ("model", "train", "score", "evaluate")


def anomaly_sections(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``anomaly`` params given to a stage (each stage reads its own sections of them);
    any other name is a typo, refused."""
    from .errors import InputError

    params = dict(params or {})
    unknown = sorted(set(params) - set(ANOMALY_SECTIONS))
    if unknown:
        raise InputError(f"anomaly.{unknown[0]}: unknown section; allowed: "
                         f"{', '.join(ANOMALY_SECTIONS)}")
    return params


@dataclass(frozen=True)
class AutoencoderSettings(Section):
    """``anomaly.model``: the convolutional autoencoder's shape."""

    SECTION: ClassVar[str] = "anomaly.model"
    input_size: int
    channels: tuple[int, ...]
    latent_dim: int
    variational: bool


@dataclass(frozen=True)
class AcquisitionJitter(Section):
    """``anomaly.train.augment``: acquisition jitter of the autoencoder's training images."""

    SECTION: ClassVar[str] = "anomaly.train.augment"
    contrast: float
    gamma: float
    zoom: float
    aspect: float
    noise: float

    @property
    def active(self) -> bool:
        return any(v > 0 for v in (self.contrast, self.gamma, self.zoom, self.aspect, self.noise))


@dataclass(frozen=True)
class AutoencoderTrainSettings(Section):
    SECTION: ClassVar[str] = "anomaly.train"
    variant: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    kl_weight: float
    augment: AcquisitionJitter


@dataclass(frozen=True)
class ScoreSettings(Section):
    """``anomaly.score``: which anomaly score, and how pixel errors become one number."""

    SECTION: ClassVar[str] = "anomaly.score"
    method: str
    aggregation: str
    fraction: float
    level: int
    k: int
    levels: tuple[int, ...] | None
    window: int
    sigma: float
    region: str
    region_threshold: float
    stretches: tuple[float, ...]


@dataclass(frozen=True)
class AnomalyEvaluateSettings(Section):
    SECTION: ClassVar[str] = "anomaly.evaluate"
    eer_tolerance: float
    n_boot: int
    prevalence: float
    n_examples: int
    batch_size: int
    baseline: str | None


# ----------------------------------------------------------------------------- explain


@dataclass(frozen=True)
class OcclusionSettings(Section):
    SECTION: ClassVar[str] = "explain.occlusion"
    window: int
    stride: int
    batch_size: int


@dataclass(frozen=True)
class FaithfulnessSettings(Section):
    SECTION: ClassVar[str] = "explain.faithfulness"
    steps: int
    blur: float


@dataclass(frozen=True)
class RandomizationSettings(Section):
    SECTION: ClassVar[str] = "explain.randomization"
    scopes: tuple[str, ...]
    n_images: int


@dataclass(frozen=True)
class ShortcutSettings(Section):
    SECTION: ClassVar[str] = "explain.shortcut"
    bands: tuple[float, ...]
    n_boot: int


@dataclass(frozen=True)
class LungMaskSettings(Section):
    """``explain.lung_mask``: the lung-field heuristic's sizes, as shares of the image side
    (:func:`pneumocxr.explain.lungmask.lung_mask`)."""

    SECTION: ClassVar[str] = "explain.lung_mask"
    blur: float
    opening: float
    frame: float
    lateral: float
    min_area: float
    closing: float


@dataclass(frozen=True)
class ExplainSettings(Section):
    """``explain``: which images, the occlusion and faithfulness sizes, the lung mask, the
    sanity checks and the shortcut probe."""

    SECTION: ClassVar[str] = "explain"
    split: str
    n_per_group: int
    baseline: float
    occlusion: OcclusionSettings
    faithfulness: FaithfulnessSettings
    lung_mask: LungMaskSettings
    mask_adjust: float
    template_images: int
    share_n_per_class: int
    randomization: RandomizationSettings
    shortcut: ShortcutSettings
    batch_size: int
