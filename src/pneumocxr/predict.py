"""Predict on new chest X-ray files with the trained models of a results folder.

``pneumocxr predict PATH...`` (see :mod:`pneumocxr.cli`) is a thin shell over this module:

- :func:`load_predictor` reads a results folder (``results/`` or ``results/models/``)::

      models/binary/{arch}/best.pt          required: p(pneumonia), label at the saved threshold
      models/binary/{arch}/knn_index.npz    optional: k-NN vote and the nearest training images
      models/three_class/{arch}/best.pt          optional: normal / bacteria / virus probabilities
      models/autoencoder/best.pt            optional, with anomaly/metrics.json (score
      anomaly/metrics.json                  params and the EER threshold): anomaly score + flag
      anomaly/score_state.pt                only for scores fitted on normal images (densities)

  and checks that the pieces belong together (task, classes, architecture, embedding width,
  data source, the anomaly metrics of this autoencoder); a missing optional piece leaves its
  columns empty and is listed in :attr:`Predictor.notes`.
- :func:`predict_files` decodes every file (JPEG / PNG in any mode and bit depth, DICOM; see
  :mod:`pneumocxr.data.images`), preprocesses it exactly as ``prepare`` did for training
  (:func:`pneumocxr.data.preprocess.preprocess` with the checkpoint's resize / crop / CLAHE
  settings, then the model's own input path: resize to ``input_size``, normalise), and returns
  one :class:`Prediction` per file. A file that cannot be used gives a row with ``error`` set
  (``kind: detail``, the reasons of :data:`pneumocxr.data.images.REJECT_KINDS`); the other
  files are still processed.
- :func:`explain_files` writes an occlusion + Grad-CAM overlay per image.
- :func:`write_predictions` writes CSV or JSON; :func:`format_table` the terminal table.

Preprocessing settings come from the checkpoint (``meta["preprocess"]``: resize, crop, CLAHE
clip limit and tile grid). Checkpoints written before that key existed fall back to the
``info.json`` of the prepared data they were trained on (``--prepared DIR``, default
``data/processed`` beside the results folder); without either, loading stops with a message.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from .errors import InputError
from . import CLASS_NAMES_3, CLASS_NAMES_BINARY
from .data.images import BadImageError, DICOM_SUFFIXES, read_image
from .data.preprocess import PreprocessConfig, preprocess
from .datasets import to_float
from .calibration import load_calibration
from .logits import probabilities
from .models import Classifier, load_model, normalize

log = logging.getLogger(__name__)

#: file name suffixes picked up when a folder is given (explicitly named files are always tried)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", *DICOM_SUFFIXES)
#: the columns of the CSV output and of :meth:`Prediction.as_row`, in order
CSV_COLUMNS = (
    "file", "ok", "error", "width", "height", "mode",
    "p_pneumonia", "threshold", "label",
    "p_normal_three_class", "p_bacteria_three_class", "p_virus_three_class", "label_three_class",
    "knn_label", "knn_p_pneumonia", "knn_k", "knn_neighbours", "knn_distances",
    "anomaly_score", "anomaly_threshold", "anomaly_flag",
)


class ModelDirError(InputError):
    """The models folder is missing, incomplete or its pieces do not belong together."""


# --------------------------------------------------------------------------------------------
# loading


@dataclass
class Component:
    """One loaded model with the settings to feed it."""

    model: torch.nn.Module
    meta: dict[str, Any]
    path: Path
    preprocess: PreprocessConfig
    clahe: bool
    preprocess_source: str = "checkpoint"
    #: temperature and operating threshold (``calibration.json`` beside the checkpoint)
    calibration: dict[str, Any] = field(default_factory=dict)
    calibration_path: Path | None = None

    @property
    def temperature(self) -> float:
        return float(self.calibration["temperature"])

    @property
    def threshold(self) -> float:
        return float(self.calibration["operating_threshold"]["value"])


@dataclass
class AnomalyPart:
    model: torch.nn.Module
    meta: dict[str, Any]
    path: Path
    preprocess: PreprocessConfig
    clahe: bool
    scorer: Any
    threshold: float
    score_params: dict[str, Any]


@dataclass
class Predictor:
    """The loaded models of one results folder (see module doc)."""

    models_dir: Path
    arch: str
    binary: Component
    three: Component | None = None
    knn: Any = None          # pneumocxr.knn.KnnIndex
    anomaly: AnomalyPart | None = None
    notes: list[str] = field(default_factory=list)
    #: forward of the binary classifier on normalised input -> (embeddings, logits); replaced
    #: by the ONNX Runtime session of :mod:`pneumocxr.export` with ``backend="onnx"``
    binary_forward: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]] | None = None
    backend: str = "torch"

    def describe(self) -> dict[str, Any]:
        """What was loaded, for the JSON output and the log."""
        out: dict[str, Any] = {
            "models_dir": str(self.models_dir), "arch": self.arch, "backend": self.backend,
            "binary": {"path": str(self.binary.path),
                       "threshold": self.binary.calibration["operating_threshold"],
                       "temperature": self.binary.temperature,
                       "calibration": str(self.binary.calibration_path),
                       "input_size": self.binary.meta["input_size"],
                       "preprocess": _cfg_dict(self.binary.preprocess, self.binary.clahe),
                       "preprocess_source": self.binary.preprocess_source,
                       "data_source": self.binary.meta.get("data_source")},
            "three_class": None if self.three is None else {
                "path": str(self.three.path), "class_names": self.three.meta["class_names"],
                "temperature": self.three.temperature},
            "knn": None if self.knn is None else {
                "k": self.knn.k, "metric": self.knn.metric, "n_indexed": len(self.knn.labels),
                "class_names": self.knn.class_names},
            "anomaly": None if self.anomaly is None else {
                "path": str(self.anomaly.path), "score": self.anomaly.score_params,
                "threshold": self.anomaly.threshold,
                "preprocess": _cfg_dict(self.anomaly.preprocess, self.anomaly.clahe)},
            "notes": list(self.notes),
        }
        return out


def _cfg_dict(cfg: PreprocessConfig, clahe: bool) -> dict[str, Any]:
    return {"resize": cfg.resize, "crop": cfg.crop, "clahe": clahe,
            "clip_limit": cfg.clip_limit, "tile_grid": cfg.tile_grid}


def resolve_models_dir(path: str | Path) -> tuple[Path, Path]:
    """``(results root, models folder)`` for a results folder or its ``models`` subfolder."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"{path}: models folder not found; run the pipeline first "
                            "(`make run` or `make demo`) or pass --models DIR (the results "
                            "folder holding models/binary/<arch>/best.pt)")
    if (path / "models" / "binary").is_dir():
        return path, path / "models"
    if (path / "binary").is_dir():
        return path.parent, path
    raise ModelDirError(f"{path}: no trained classifier here (expected "
                        f"{path}/models/binary/<arch>/best.pt); run the pipeline's train_binary "
                        "stage or pass the results folder of a finished run")


def _choose_arch(models: Path, arch: str | None) -> str:
    found = sorted(p.parent.name for p in (models / "binary").glob("*/best.pt"))
    if not found:
        raise ModelDirError(f"{models}/binary: no <arch>/best.pt; run the train_binary stage")
    if arch is not None:
        if arch not in found:
            raise ModelDirError(f"{models}/binary/{arch}/best.pt not found; trained "
                                f"architectures: {', '.join(found)}")
        return arch
    if len(found) > 1:
        raise ModelDirError(f"{models}/binary holds several architectures ({', '.join(found)}); "
                            "choose one with --arch")
    return found[0]


def preprocess_settings(meta: Mapping[str, Any], prepared: Path | None, what: str
                        ) -> tuple[PreprocessConfig, dict[str, Any]]:
    """Resize / crop / CLAHE of the training images: ``meta["preprocess"]`` or ``info.json``."""
    spec = meta.get("preprocess")
    source = "checkpoint"
    if spec is None:
        info_path = None if prepared is None else Path(prepared) / "info.json"
        if info_path is None or not info_path.is_file():
            raise ModelDirError(
                f"{what}: the checkpoint does not record its preprocessing (meta['preprocess']) "
                f"and no prepared-data info.json was found "
                f"({info_path or 'no --prepared folder given'}); pass --prepared DIR, the "
                "`prepare` output the model was trained on (default data/processed)")
        spec = json.loads(info_path.read_text())
        source = str(info_path)
        ds_model, ds_info = meta.get("data_source"), spec.get("data_source")
        if ds_model and ds_info and ds_model != ds_info:
            raise ModelDirError(f"{what}: trained on {ds_model!r} data but {info_path} describes "
                                f"{ds_info!r} data; pass the --prepared folder of its run")
    missing = [k for k in ("resize", "crop") if k not in spec]
    if missing:
        raise ModelDirError(f"{what}: preprocessing settings from {source} lack {missing}")
    try:
        cfg = PreprocessConfig.from_params({k: spec[k] for k in ("resize", "crop", "clahe")
                                            if spec.get(k) is not None})
    except ValueError as err:
        raise ModelDirError(f"{what}: preprocessing settings from {source}: {err}") from None
    return cfg, {"source": source}


def _load_classifier(path: Path, class_names: Sequence[str], arch: str,
                     prepared: Path | None, calibration: Path | None = None) -> Component:
    try:
        model, meta = load_model(path, arch=arch, class_names=list(class_names))
    except FileNotFoundError as err:
        raise ModelDirError(str(err)) from None
    except ValueError as err:
        raise ModelDirError(f"{err}") from None
    for key in ("input_size", "normalization"):
        if key not in meta:
            raise ModelDirError(f"{path}: checkpoint metadata lacks {key!r}; retrain it")
    site = path.parent / "site_calibration.json"   # `pneumocxr calibrate`: the site's own
    cal_path = calibration or (site if site.is_file() else path.parent / "calibration.json")
    try:
        calibration = load_calibration(cal_path)
    except (FileNotFoundError, ValueError) as err:   # missing or unreadable: both name the file and the fix
        raise ModelDirError(str(err)) from None
    cfg, src = preprocess_settings(meta, prepared, str(path))
    variant = (meta.get("preprocess") or {}).get("variant", "plain")
    return Component(model, meta, path, cfg, variant == "clahe", src["source"], calibration,
                     cal_path)


def _load_knn(path: Path, binary: Component, arch: str):
    from .knn import load_knn_index

    try:
        index = load_knn_index(path)
    except (FileNotFoundError, ValueError) as err:
        raise ModelDirError(str(err)) from None
    info = index.info or {}
    if info.get("arch", arch) != arch or info.get("task", "binary") != "binary":
        raise ModelDirError(f"{path}: k-NN index of {info.get('task')}/{info.get('arch')}, not "
                            f"binary/{arch}; rerun the tsne_knn stage")
    source = binary.meta.get("data_source")
    if info.get("data_source") and source and info["data_source"] != source:
        raise ModelDirError(f"{path}: index of {info['data_source']!r} images, the model was "
                            f"trained on {source!r}; use the models of one run")
    if index.dim != binary.model.num_features:
        raise ModelDirError(f"{path}: {index.dim}-d index but the {arch} model embeds "
                            f"{binary.model.num_features}-d; rerun the embed and tsne_knn stages")
    if list(index.class_names) != list(CLASS_NAMES_BINARY):
        raise ModelDirError(f"{path}: index classes {index.class_names}, expected "
                            f"{list(CLASS_NAMES_BINARY)}")
    return index


def _load_anomaly(results: Path, models: Path, prepared: Path | None,
                  data_source: str | None) -> AnomalyPart:
    from .anomaly.scores import create_score
    from .models import load_autoencoder

    path = models / "autoencoder" / "best.pt"
    metrics_path = results / "anomaly" / "metrics.json"
    try:
        model, meta = load_autoencoder(path, "cpu")
    except (FileNotFoundError, ValueError) as err:
        raise ModelDirError(str(err)) from None
    if not metrics_path.is_file():
        raise ModelDirError(f"{metrics_path}: not found; the anomaly threshold is chosen by the "
                            "evaluate_anomaly stage (run it)")
    try:
        metrics = json.loads(metrics_path.read_text())
        threshold = float(metrics["threshold"]["value"])
        score_params = {k: v for k, v in metrics["score"].items() if k != "label"}
        recorded = metrics["model"]
    except (ValueError, KeyError, TypeError) as err:
        raise ModelDirError(f"{metrics_path}: not an evaluate_anomaly metrics file ({err})") \
            from None
    if (recorded.get("best_epoch") != meta.get("best_epoch")
            or not math.isclose(float(recorded.get("val_mse", math.nan)),
                                float(meta.get("val_mse", math.nan)), rel_tol=1e-9)):
        raise ModelDirError(f"{metrics_path} was computed for another autoencoder (best epoch "
                            f"{recorded.get('best_epoch')} vs {meta.get('best_epoch')} in {path});"
                            " rerun the evaluate_anomaly stage")
    if data_source and meta.get("data_source") and meta["data_source"] != data_source:
        raise ModelDirError(f"{path}: trained on {meta['data_source']!r} data but the classifier "
                            f"on {data_source!r}; use the models of one run")
    try:
        scorer = create_score(**score_params)
    except (TypeError, ValueError) as err:
        raise ModelDirError(f"{metrics_path}: score {score_params} ({err})") from None
    if scorer.needs_fit:
        state_path = results / "anomaly" / "score_state.pt"
        if not state_path.is_file():
            raise ModelDirError(
                f"anomaly score {scorer.name!r} is fitted on the normal training images, but "
                f"its fitted state ({state_path}) was not saved by evaluate_anomaly")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("score") != score_params:
            raise ModelDirError(f"{state_path}: fitted for score {state.get('score')}, the "
                                f"metrics say {score_params}; rerun evaluate_anomaly")
        scorer.load_state_dict(state["state"])
    cfg, _ = preprocess_settings(meta, prepared, str(path))
    return AnomalyPart(model, meta, path, cfg, meta.get("variant", "clahe") == "clahe", scorer,
                       threshold, score_params)


def load_predictor(models_dir: str | Path = "results", *, arch: str | None = None,
                   prepared: str | Path | None = None, backend: str = "torch",
                   calibration: str | Path | None = None) -> Predictor:
    """Load the models of a results folder (see module doc).

    Args:
        models_dir: ``results`` (holding ``models/``) or the ``models`` folder itself.
        arch: the architecture to use when several were trained.
        prepared: the prepared-data folder whose ``info.json`` gives the preprocessing of
            checkpoints that do not record it (default ``data/processed`` beside the results).
        backend: ``torch`` or ``onnx`` (the binary classifier through ONNX Runtime; needs
            ``pneumocxr export`` first).
        calibration: the binary model's operating point to use; default the
            ``site_calibration.json`` beside it (``pneumocxr calibrate``) when present, else
            the pipeline's ``calibration.json`` (fitted on val).

    Raises:
        ModelDirError: missing folder or binary model, or pieces that do not belong together.
    """
    results, models = resolve_models_dir(models_dir)
    prepared = Path(prepared) if prepared is not None else results.parent / "data" / "processed"
    arch = _choose_arch(models, arch)
    binary = _load_classifier(models / "binary" / arch / "best.pt", CLASS_NAMES_BINARY, arch,
                              prepared, Path(calibration) if calibration else None)
    pred = Predictor(models, arch, binary)
    if binary.calibration.get("source") == "site":
        fitted = binary.calibration.get("fitted_on", {})
        pred.notes.append(f"operating point from {binary.calibration_path} (fitted on "
                          f"{fitted.get('n_images')} labelled images of {fitted.get('sample')})")
    source = binary.meta.get("data_source")
    if source == "demo":
        pred.notes.append("these models were trained on the SYNTHETIC demo data: their "
                          "answers say nothing about real X-rays")
    if binary.preprocess_source != "checkpoint":
        pred.notes.append(f"preprocessing read from {binary.preprocess_source} (the checkpoint "
                          "does not record it)")

    three_path = models / "three_class" / arch / "best.pt"
    if three_path.is_file():
        pred.three = _load_classifier(three_path, CLASS_NAMES_3, arch, prepared)
        if pred.three.meta.get("data_source") != source:
            raise ModelDirError(f"{three_path}: trained on {pred.three.meta.get('data_source')!r}"
                                f" data, the binary model on {source!r}; use one run's models")
    else:
        pred.notes.append(f"no 3-class model ({three_path}): 3-class columns left empty")

    knn_path = models / "binary" / arch / "knn_index.npz"
    if knn_path.is_file():
        pred.knn = _load_knn(knn_path, binary, arch)
    else:
        pred.notes.append(f"no k-NN index ({knn_path}): k-NN columns left empty")

    if (models / "autoencoder" / "best.pt").is_file():
        pred.anomaly = _load_anomaly(results, models, prepared, source)
    else:
        pred.notes.append(f"no autoencoder ({models / 'autoencoder' / 'best.pt'}): anomaly "
                          "columns left empty")

    if backend == "onnx":
        from .export import onnx_forward

        pred.binary_forward = onnx_forward(binary.path)
    elif backend != "torch":
        raise InputError(f"backend must be torch or onnx, got {backend!r}")
    pred.backend = backend
    for note in pred.notes:
        log.info("%s", note)
    return pred


# --------------------------------------------------------------------------------------------
# inputs


def expand_inputs(paths: Iterable[str | Path]) -> list[tuple[str, str | None]]:
    """Files to predict on: ``[(path, None) ...]`` or ``(what, error)`` for an input that
    names nothing usable.

    A file is taken whatever its name; a folder gives its image files (``IMAGE_SUFFIXES``,
    recursively, sorted); a path that does not exist is expanded as a glob (``**`` recursive).
    """
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()

    def add(p: str, error: str | None = None) -> None:
        if p not in seen:
            seen.add(p)
            out.append((p, error))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(str(f) for f in p.rglob("*")
                           if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                add(str(p), f"not_an_image: folder holds no {'/'.join(IMAGE_SUFFIXES)} files")
            for f in files:
                add(f)
        elif p.exists() or p.is_symlink():
            add(str(p))
        else:
            matches = sorted(glob.glob(str(raw), recursive=True)) if glob.has_magic(str(raw)) \
                else []
            files = [m for m in matches if Path(m).is_file()]
            if not files:
                add(str(raw), "unreadable: no such file" if not glob.has_magic(str(raw))
                    else "unreadable: the pattern matches no file")
            for f in files:
                add(f)
    return out


# --------------------------------------------------------------------------------------------
# prediction


@dataclass
class Prediction:
    """The models' answers for one file (``error`` set and the rest None when it failed)."""

    file: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    p_pneumonia: float | None = None
    threshold: float | None = None
    label: str | None = None
    probs_three_class: dict[str, float] | None = None
    label_three_class: str | None = None
    knn_label: str | None = None
    knn_p_pneumonia: float | None = None
    knn_k: int | None = None
    knn_neighbours: list[str] | None = None
    knn_distances: list[float] | None = None
    anomaly_score: float | None = None
    anomaly_threshold: float | None = None
    anomaly_flag: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}

    def as_row(self) -> dict[str, Any]:
        """Flat CSV row (:data:`CSV_COLUMNS`); lists joined with ``;``."""
        d = self.as_dict()
        p3 = self.probs_three_class or {}
        d.update({f"p_{c}_three_class": p3.get(c) for c in CLASS_NAMES_3})
        d["knn_neighbours"] = None if self.knn_neighbours is None else ";".join(self.knn_neighbours)
        d["knn_distances"] = None if self.knn_distances is None else \
            ";".join(f"{x:.6g}" for x in self.knn_distances)
        return {k: d.get(k) for k in CSV_COLUMNS}


@dataclass
class _Decoded:
    index: int
    gray: np.ndarray


def _classifier_input(crops: np.ndarray, comp: Component) -> torch.Tensor:
    """uint8 (N, crop, crop) -> the normalised float input of a classifier checkpoint."""
    x = to_float(torch.from_numpy(crops)[:, None], int(comp.meta["input_size"]))
    in_chans = int(comp.meta.get("in_chans", 1))
    if in_chans > 1:
        x = x.expand(-1, in_chans, -1, -1)
    return normalize(x, comp.meta["normalization"])


@torch.inference_mode()
def torch_forward(model: Classifier, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings, logits)`` of a registry classifier for normalised input ``x``."""
    model.eval()
    features = model.forward_features(x)
    pre = model.forward_head(features, pre_logits=True)
    return pre.float().numpy(), model.logits(pre).float().numpy()


def _crops(grays: Sequence[np.ndarray], cfg: PreprocessConfig, clahe: bool) -> np.ndarray:
    return np.stack([preprocess(g, cfg, clahe=clahe) for g in grays])


def _predict_batch(pred: Predictor, batch: list[_Decoded], rows: list[Prediction]) -> None:
    grays = [d.gray for d in batch]
    b = pred.binary
    x = _classifier_input(_crops(grays, b.preprocess, b.clahe), b)
    forward = pred.binary_forward or (lambda t: torch_forward(b.model, t))
    emb, logits = forward(x)
    p_bin = probabilities(logits, b.temperature)
    thr = b.threshold
    p_pneu = 1.0 - p_bin[:, 0]

    p3 = None
    if pred.three is not None:
        t = pred.three
        same = (t.preprocess, t.clahe) == (b.preprocess, b.clahe)
        x3 = x if same and t.meta["input_size"] == b.meta["input_size"] and \
            t.meta["normalization"] == b.meta["normalization"] else \
            _classifier_input(_crops(grays, t.preprocess, t.clahe), t)
        _, logits3 = torch_forward(t.model, x3)
        p3 = probabilities(logits3, t.temperature)

    knn = None
    if pred.knn is not None:
        from .knn import knn_predict

        knn = knn_predict(pred.knn, emb)

    scores = None
    if pred.anomaly is not None:
        from .anomaly.scores import compute_scores
        from .models import autoencoder_input

        a = pred.anomaly
        xa = autoencoder_input(_crops(grays, a.preprocess, a.clahe), int(a.meta["model"]["input_size"]))
        scores = compute_scores(a.scorer, a.model, xa, batch_size=max(1, len(batch)))

    for j, d in enumerate(batch):
        r = rows[d.index]
        r.p_pneumonia = float(p_pneu[j])
        r.threshold = thr
        r.label = "PNEUMONIA" if p_pneu[j] >= thr else "NORMAL"
        if p3 is not None:
            names = list(pred.three.meta["class_names"])
            r.probs_three_class = {c: float(p3[j, i]) for i, c in enumerate(names)}
            r.label_three_class = names[int(np.argmax(p3[j]))]
        if knn is not None:
            names = pred.knn.class_names
            r.knn_label = names[int(knn.pred[j])].upper()
            r.knn_p_pneumonia = float(1.0 - knn.proba[j, 0])
            r.knn_k = int(pred.knn.k)
            r.knn_neighbours = [str(f) for f in knn.neighbour_files[j]]
            r.knn_distances = [float(v) for v in knn.distances[j]]
        if scores is not None:
            r.anomaly_score = float(scores[j])
            r.anomaly_threshold = float(pred.anomaly.threshold)
            r.anomaly_flag = bool(scores[j] >= pred.anomaly.threshold)


def _decode(path: str, min_side: int, max_pixels: int) -> tuple[np.ndarray | None, Prediction]:
    row = Prediction(file=path)
    try:
        dec = read_image(path, min_side=min_side, max_pixels=max_pixels)
    except BadImageError as err:
        row.error = str(err)
        return None, row
    row.width, row.height, row.mode = dec.width, dec.height, dec.mode
    return dec.pixels, row


def predict_files(pred: Predictor, paths: Iterable[str | Path], *, batch_size: int = 32,
                  min_side: int = 64, max_pixels: int = 100_000_000) -> list[Prediction]:
    """One :class:`Prediction` per input (see :func:`expand_inputs`), in input order.

    Files are decoded one at a time and the models run on batches of ``batch_size`` decoded
    images, so memory stays bounded however many files are given. ``min_side`` /
    ``max_pixels`` are ``prepare``'s checks (``data.min_side``, ``data.max_pixels``).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    rows: list[Prediction] = []
    batch: list[_Decoded] = []
    for path, error in expand_inputs(paths):
        if error is not None:
            rows.append(Prediction(file=path, error=error))
            continue
        gray, row = _decode(path, min_side, max_pixels)
        rows.append(row)
        if gray is None:
            continue
        batch.append(_Decoded(len(rows) - 1, gray))
        if len(batch) == batch_size:
            _run_batch(pred, batch, rows)
            batch = []
    if batch:
        _run_batch(pred, batch, rows)
    return rows


def _run_batch(pred: Predictor, batch: list[_Decoded], rows: list[Prediction]) -> None:
    try:
        _predict_batch(pred, batch, rows)
    except (ValueError, RuntimeError) as err:
        if len(batch) == 1:
            rows[batch[0].index].error = f"corrupt: the models could not process it ({err})"
            return
        for d in batch:  # find the image that fails, keep the others
            _run_batch(pred, [d], rows)


# --------------------------------------------------------------------------------------------
# outputs


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: Sequence[Prediction]) -> str:
    """A fixed-width text table, one line per file (errors show their reason)."""
    head = ("file", "label", "p(pneu)", "thr", "3-class", "p3", "k-NN vote", "anomaly", "flag")
    lines = []
    for r in rows:
        name = r.file if len(r.file) <= 40 else "..." + r.file[-37:]
        if not r.ok:
            lines.append((name, f"ERROR {r.error}"))
            continue
        p3 = "-" if r.probs_three_class is None else max(r.probs_three_class.values())
        vote = "-" if r.knn_label is None else \
            f"{r.knn_label} (p(pneu) {r.knn_p_pneumonia:.2f}, k={r.knn_k})"
        flag = "-" if r.anomaly_flag is None else ("ANOMALY" if r.anomaly_flag else "normal")
        lines.append((name, r.label, _fmt(r.p_pneumonia), _fmt(r.threshold),
                      r.label_three_class or "-", p3 if p3 == "-" else _fmt(p3), vote,
                      _fmt(r.anomaly_score, ".4g"), flag))
    widths = [max([len(head[i])] + [len(ln[i]) for ln in lines if len(ln) == len(head)])
              for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    for ln in lines:
        if len(ln) == 2:
            out.append(f"{ln[0].ljust(widths[0])}  {ln[1]}")
        else:
            out.append("  ".join(c.ljust(w) for c, w in zip(ln, widths)).rstrip())
    return "\n".join(out)


def write_predictions(rows: Sequence[Prediction], path: str | Path,
                      info: Mapping[str, Any] | None = None) -> Path:
    """CSV (:data:`CSV_COLUMNS`) or JSON (``{"models": info, "predictions": [...]}``) by
    the suffix of ``path``."""
    from .utils import jsonable

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if v is None else
                                format(v, ".6g") if isinstance(v, float) else v)
                            for k, v in r.as_row().items()})
    elif suffix == ".json":
        doc = {"models": dict(info or {}), "n_files": len(rows),
               "n_failed": sum(not r.ok for r in rows),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "predictions": [r.as_dict() for r in rows]}
        path.write_text(json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n")
    else:
        raise InputError(f"{path}: output must end in .csv or .json")
    return path


# --------------------------------------------------------------------------------------------
# explanations


def explain_files(pred: Predictor, rows: Sequence[Prediction], out_dir: str | Path, *,
                  window: int = 16, stride: int = 8, baseline: float = 0.5,
                  batch_size: int = 64, min_side: int = 64,
                  max_pixels: int = 100_000_000) -> list[Path]:
    """Occlusion and Grad-CAM overlays of the binary model for every successful row.

    One PNG per image in ``out_dir`` (``<file stem>.png``, numbered on a name clash): the
    image as the model sees it, the occlusion map (drop in the probability of the predicted
    label when a ``window`` px square is set to ``baseline``; :class:`Occlusion`) and the
    Grad-CAM map of the predicted label on the last convolutional block. The predicted label
    is the one at the operating threshold, as in the table.
    """
    import matplotlib.pyplot as plt

    from .explain.gradcam import GradCAM, normalize_map
    from .explain.occlusion import Occlusion
    from .explain.targets import (ClassifierOutputSoftmaxTarget, ClassifierOutputTarget,
                                  ImageModel)
    from .plots.common import save, title
    from .plots.explain import CMAPS

    out_dir = Path(out_dir)
    b = pred.binary
    size = int(b.meta["input_size"])
    window, stride = min(window, size), min(stride, size)
    image_model = ImageModel(b.model, b.meta["normalization"]).eval()
    written: list[Path] = []
    used: set[str] = set()
    for r in rows:
        if not r.ok:
            continue
        gray, _ = _decode(r.file, min_side, max_pixels)
        if gray is None:
            continue
        crop = preprocess(gray, b.preprocess, clahe=b.clahe)
        x = to_float(torch.from_numpy(crop[None, None]), size)
        cls = 1 if r.label == "PNEUMONIA" else 0
        occ = Occlusion(image_model).attribute(
            x, ClassifierOutputSoftmaxTarget(cls), window=window, stride=stride,
            baseline=baseline, batch_size=batch_size)[0].numpy()
        with GradCAM(image_model) as cam:
            gc = normalize_map(cam(x, ClassifierOutputTarget(cls)))[0].numpy()
        img = x[0, 0].numpy()
        fig, axes = plt.subplots(1, 3, figsize=(13.0, 4.4), layout="constrained")
        v = float(np.abs(occ).max()) or 1.0
        axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[0].set_title("input (as the model sees it)", fontsize=9)
        axes[1].imshow(img, cmap="gray", vmin=0, vmax=1)
        im1 = axes[1].imshow(occ, cmap=CMAPS["occlusion"], vmin=-v, vmax=v, alpha=0.6)
        axes[1].set_title(f"occlusion ({window} px window, stride {stride})", fontsize=9)
        axes[2].imshow(img, cmap="gray", vmin=0, vmax=1)
        im2 = axes[2].imshow(gc, cmap=CMAPS["gradcam"], vmin=0, vmax=1, alpha=0.5)
        axes[2].set_title("Grad-CAM (scaled to its maximum)", fontsize=9)
        for ax in axes:
            ax.set_xlabel("x (px)")
            ax.set_ylabel("y (px)")
        fig.colorbar(im1, ax=axes[1], fraction=0.046, pad=0.04,
                     label=f"drop in p({b.meta['class_names'][cls]})")
        fig.colorbar(im2, ax=axes[2], fraction=0.046, pad=0.04, label="Grad-CAM")
        fig.suptitle(title(f"{Path(r.file).name}: {r.label} (p(pneumonia) = "
                           f"{r.p_pneumonia:.3f}, threshold {r.threshold:.3f}), {pred.arch}",
                           b.meta.get("data_source") or "unknown"), fontsize=10)
        stem = Path(r.file).stem
        name, k = stem, 1
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        written.append(save(fig, out_dir / f"{name}.png"))
    return written
