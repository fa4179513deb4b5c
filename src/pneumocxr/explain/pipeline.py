"""The ``explain`` stage: where does a trained classifier look, and can the maps be trusted?

For one checkpoint (``models/{task}/{arch}/best.pt``) and the prepared test split:

1. **Images**: the model predicts the whole split; :func:`select_images` picks
   ``n_per_group`` images per (true class, correct / wrong) group with a seeded permutation.
   Images are explained at the model's input size (``meta["input_size"]``).
2. **Maps** of the predicted class: occlusion sensitivity (drop in its softmax probability)
   and Grad-CAM (its logit, last convolutional block).
3. **Faithfulness**: deletion / insertion AUC of each map, and of a random map as the floor.
4. **Where the model looks**: the share of each map's positive mass inside the lung fields,
   with two masks -- ``per_image`` (:func:`~pneumocxr.explain.lungmask.lung_mask` of the
   image's CLAHE variant) and ``template`` (pixel-wise majority of the per-image masks of
   normal *training* images: it does not shrink where pneumonia makes a lung opaque, which
   the per-image mask does) -- each also eroded and dilated by ``mask_adjust`` x side.
   ``enrichment = share / mask area`` (1 = no more attribution in the lungs than a uniform map
   would put there). Grad-CAM, being cheap, also runs on ``share_n_per_class`` test images
   per class for a larger sample.
5. **Model randomisation**: Spearman correlation between the maps of the trained model and of
   copies with a re-initialised head / all layers, on ``randomization.n_images`` images.
6. **Shortcut probe**: accuracy and AUROC on the whole split with the border band blanked
   (:mod:`pneumocxr.explain.shortcut`).

Outputs: ``metrics.json`` (everything above, with ``data_source``), ``maps.npz`` (the maps,
masks and image indices, float16) and the figures of :mod:`pneumocxr.plots.explain`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..data.arrays import load_split
from ..datasets import check_task, load_task_split, to_float
from ..inference import predict_logits
from ..models import load_model
from ..settings import ExplainSettings, LungMaskSettings
from ..utils import resolve_device, set_determinism, write_json
from .faithfulness import (deletion_insertion, random_attribution, randomized_model,
                           rank_correlation, summarize)
from .gradcam import GradCAM, normalize_map
from .lungmask import adjust_mask, attribution_share, lung_mask
from .occlusion import Occlusion
from .shortcut import border_probe
from .targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget, ImageModel

log = logging.getLogger(__name__)

METHODS = ("occlusion", "gradcam")
MASKS = ("per_image", "template")
VARIANTS = ("eroded", "base", "dilated")
FIGURES = ("occlusion", "gradcam", "comparison", "lung_share", "faithfulness")


def select_images(labels: np.ndarray, preds: np.ndarray, n_per_group: int, seed: int,
                  class_names: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """``n_per_group`` images per (true class, correct / wrong) group, in a seeded order.

    Returns one row per image: ``index`` (into the split), ``label``, ``pred``, ``correct``,
    ``group`` (e.g. ``normal / correct``) and ``rank`` (position within its group), ordered
    by class, then correct before wrong, then rank. A group with fewer images gives all it has.
    """
    labels = np.asarray(labels).astype(int)
    preds = np.asarray(preds).astype(int)
    order = np.random.default_rng(seed).permutation(len(labels))
    rows = []
    for c, name in enumerate(class_names):
        for correct in (True, False):
            members = [i for i in order if labels[i] == c and (preds[i] == c) == correct]
            for rank, i in enumerate(members[:n_per_group]):
                rows.append({"index": int(i), "label": c, "pred": int(preds[i]),
                             "correct": correct,
                             "group": f"{name} / {'correct' if correct else 'wrong'}",
                             "rank": rank})
    return pd.DataFrame(rows, columns=["index", "label", "pred", "correct", "group", "rank"])


def _as_model_input(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, size, size) in [0, 1], as the model sees them."""
    return to_float(torch.from_numpy(np.ascontiguousarray(images))[:, None], size)


def _resized_uint8(images: np.ndarray, size: int) -> np.ndarray:
    x = _as_model_input(images, size)[:, 0]
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def _gradcam_maps(model: torch.nn.Module, x: torch.Tensor, categories: np.ndarray,
                  batch_size: int) -> torch.Tensor:
    out = []
    with GradCAM(model) as cam:
        for s in range(0, len(x), batch_size):
            targets = [ClassifierOutputTarget(int(c)) for c in categories[s:s + batch_size]]
            out.append(cam(x[s:s + batch_size], targets))
    return torch.cat(out) if out else torch.zeros(0, *x.shape[-2:])


def _occlusion_maps(model: torch.nn.Module, x: torch.Tensor, categories: np.ndarray,
                    p: ExplainSettings, progress: bool) -> torch.Tensor:
    occ = p.occlusion
    return Occlusion(model).attribute(
        x, [ClassifierOutputSoftmaxTarget(int(c)) for c in categories], window=occ.window,
        stride=occ.stride, baseline=p.baseline, batch_size=occ.batch_size,
        channels_last=True, progress=progress)


def template_mask(clahe_images: np.ndarray, cfg: LungMaskSettings) -> tuple[np.ndarray, int]:
    """Pixel-wise majority of the per-image masks (images with an empty mask are skipped)."""
    masks = [m for m in (lung_mask(img, cfg) for img in clahe_images) if m.any()]
    if not masks:
        raise InputError("no lung mask could be found on any template image; check "
                         "explain.lung_mask (or the CLAHE variant of the prepared data)")
    return np.mean(masks, axis=0) >= 0.5, len(masks)


def _mask_variants(mask: np.ndarray, adjust_px: int) -> dict[str, np.ndarray]:
    return {"eroded": adjust_mask(mask, -adjust_px), "base": mask,
            "dilated": adjust_mask(mask, adjust_px)}


def share_table(maps: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                labels: np.ndarray, adjust_px: int) -> pd.DataFrame:
    """Long table: one row per (image, method, mask, variant) with share, area, enrichment.

    ``masks[name]`` is (N, H, W) (one mask per image) or (H, W) (one mask for all images);
    each is also eroded and dilated by ``adjust_px`` pixels.
    """
    rows = []
    for mask_name, m in masks.items():
        shared = _mask_variants(m, adjust_px) if m.ndim == 2 else None
        for i in range(len(labels)):
            variants = shared if shared is not None else _mask_variants(m[i], adjust_px)
            for variant, vm in variants.items():
                area = float(vm.mean())
                for method, a in maps.items():
                    share = attribution_share(a[i], vm)
                    rows.append({"image": i, "label": int(labels[i]), "method": method,
                                 "mask": mask_name, "variant": variant, "share": share,
                                 "area": area,
                                 "enrichment": share / area if area > 0 else float("nan")})
    return pd.DataFrame(rows)


def _share_summary(table: pd.DataFrame, class_names) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (method, mask, variant), g in table.groupby(["method", "mask", "variant"], sort=False):
        node = out.setdefault(method, {}).setdefault(mask, {}).setdefault(variant, {})
        for c, name in enumerate(class_names):
            gc = g[g["label"] == c]
            node[name] = {"share": summarize(gc["share"]),
                          "enrichment": summarize(gc["enrichment"]),
                          "area": summarize(gc["area"]),
                          "mask_failures": int(gc["share"].isna().sum())}
    return out


def run_explain(
    model_path: str | Path,
    processed_dir: str | Path,
    *,
    metrics_path: str | Path,
    maps_path: str | Path,
    figures: Mapping[str, str | Path],
    params: ExplainSettings | Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Run the explain stage for one checkpoint; write metrics, maps and figures.

    ``params`` is the ``explain`` section. Timings go to the log, not the metrics, so the
    same inputs give the same bytes.

    ``figures`` maps each name in :data:`FIGURES` to its PNG path. Returns the metrics.
    """
    from ..plots import explain as plots

    missing = [f for f in FIGURES if f not in figures]
    if missing:
        raise InputError(f"figures: missing paths for {missing}; expected {list(FIGURES)}")
    p = ExplainSettings.from_params(params)
    set_determinism(seed)
    dev = resolve_device(device)
    classifier, meta = load_model(model_path)
    task = meta.get("task")
    class_names = list(check_task(task))
    if list(meta["class_names"]) != class_names:
        raise InputError(f"{model_path}: classes {meta['class_names']} differ from task {task}")
    size = int(meta["input_size"])
    normalization = meta["normalization"]
    if p.occlusion.window > size:
        raise InputError(f"explain.occlusion.window ({p['occlusion']['window']} px) exceeds the "
                         f"model input ({size} px); lower it")
    # channels-last convolutions: the same numbers, ~15% less CPU time (bench/occlusion_speed.py)
    classifier = classifier.to(dev).to(memory_format=torch.channels_last).eval()
    model = ImageModel(classifier, normalization).to(dev).eval()

    data, source = load_task_split(processed_dir, p.split, task)
    clahe = load_split(processed_dir, p.split, "clahe")
    if len(clahe) != len(data):
        raise InputError(f"{processed_dir}: the clahe and plain variants of {p['split']} differ "
                         "in length; rerun prepare")
    log.info("explain %s/%s (%s, %d images at %d px, data %s)", task, meta["arch"],
             model_path, len(data), size, source)
    logits = predict_logits(classifier, data, normalization=normalization,
                            batch_size=p.batch_size, input_size=size, channels_last=True,
                            progress=progress)
    preds = logits.argmax(1)
    probs = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()

    sel = select_images(data.labels, preds, p.n_per_group, seed, class_names)
    if sel.empty:
        raise InputError(f"{processed_dir}: no images selected from split {p['split']}")
    idx = sel["index"].to_numpy()
    cats = sel["pred"].to_numpy()
    x = _as_model_input(data.images[idx], size).to(dev)
    log.info("selected %d images: %s", len(sel), sel["group"].value_counts(sort=False).to_dict())

    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    occ_maps = _occlusion_maps(model, x, cats, p, progress).numpy()
    timing["occlusion_s_per_image"] = (time.perf_counter() - t0) / len(sel)
    t0 = time.perf_counter()
    cam_maps = _gradcam_maps(model, x, cats, p.batch_size).numpy()
    timing["gradcam_s_per_image"] = (time.perf_counter() - t0) / len(sel)
    maps = {"occlusion": occ_maps, "gradcam": cam_maps}
    log.info("maps: occlusion %.2f s/image, Grad-CAM %.3f s/image", timing["occlusion_s_per_image"],
             timing["gradcam_s_per_image"])

    # -- faithfulness: deletion / insertion of each method and of a random ranking
    fp = p.faithfulness
    faith_rows = []
    curves: dict[str, dict[str, list[np.ndarray]]] = {}
    candidates = dict(maps, random=np.stack([random_attribution((size, size), seed + i)
                                             for i in range(len(sel))]))
    t0 = time.perf_counter()
    for method, m in candidates.items():
        for i in range(len(sel)):
            r = deletion_insertion(model, x[i], m[i], ClassifierOutputSoftmaxTarget(int(cats[i])),
                                   steps=fp.steps, baseline=p.baseline, blur=fp.blur,
                                   batch_size=p.batch_size)
            faith_rows.append({"image": i, "label": int(sel["label"].iloc[i]), "method": method,
                               "deletion_auc": r["deletion_auc"],
                               "insertion_auc": r["insertion_auc"]})
            c = curves.setdefault(method, {"deletion": [], "insertion": []})
            c["deletion"].append(r["deletion"])
            c["insertion"].append(r["insertion"])
    timing["faithfulness_s"] = time.perf_counter() - t0
    faith = pd.DataFrame(faith_rows)
    faith["insertion_minus_deletion"] = faith["insertion_auc"] - faith["deletion_auc"]
    fractions = np.linspace(0.0, 1.0, fp.steps + 1)
    faith_metrics: dict[str, Any] = {}
    for method, g in faith.groupby("method", sort=False):
        faith_metrics[method] = {
            k: summarize(g[k])
            for k in ("deletion_auc", "insertion_auc", "insertion_minus_deletion")}
        faith_metrics[method]["per_class"] = {
            name: {k: summarize(g[g["label"] == c][k]) for k in ("deletion_auc", "insertion_auc")}
            for c, name in enumerate(class_names)}
        faith_metrics[method]["mean_curves"] = {
            k: np.mean(v, axis=0).tolist() for k, v in curves[method].items()}
    faith_metrics["fractions"] = fractions.tolist()

    # -- lung masks (per image, template) and the share of attribution inside them
    mcfg = p.lung_mask
    clahe_sel = _resized_uint8(clahe.images[idx], size)
    masks_sel = np.stack([lung_mask(img, mcfg) for img in clahe_sel])
    train = load_split(processed_dir, "train", "clahe")
    normal_train = np.flatnonzero(train.y_binary == 0)
    if len(normal_train) == 0:
        raise InputError(f"{processed_dir}: no normal training images to build the lung template")
    pick = np.sort(np.random.default_rng(seed).permutation(normal_train)[:p.template_images])
    template, n_template = template_mask(_resized_uint8(train.images[pick], size), mcfg)
    adjust_px = int(round(p.mask_adjust * size))
    shares = share_table(maps, {"per_image": masks_sel, "template": template},
                         sel["label"].to_numpy(), adjust_px)
    lung_metrics: dict[str, Any] = {
        "adjust_px": adjust_px, "template_area": float(template.mean()),
        "template_from_normal_train_images": n_template,
        "per_image_mask_empty": int((~masks_sel.any(axis=(1, 2))).sum()),
        "selected": _share_summary(shares, class_names),
    }
    sample_shares = None
    rng = np.random.default_rng(seed + 1)
    sample_idx = np.sort(np.concatenate([
        rng.permutation(np.flatnonzero(data.labels == c))[:p.share_n_per_class]
        for c in range(len(class_names))]))
    if len(sample_idx) > 0:
        xs = _as_model_input(data.images[sample_idx], size).to(dev)
        t0 = time.perf_counter()
        cam_sample = _gradcam_maps(model, xs, preds[sample_idx], p.batch_size).numpy()
        masks_sample = np.stack([lung_mask(img, mcfg)
                                 for img in _resized_uint8(clahe.images[sample_idx], size)])
        sample_shares = share_table({"gradcam": cam_sample},
                                    {"per_image": masks_sample, "template": template},
                                    data.labels[sample_idx], adjust_px)
        lung_metrics["gradcam_sample"] = {
            "n_images": int(len(sample_idx)), **_share_summary(sample_shares, class_names)}
        timing["gradcam_sample_s"] = time.perf_counter() - t0

    # -- model randomisation (Adebayo et al.)
    rp = p.randomization
    n_rand = min(rp.n_images, len(sel))
    rand_metrics: dict[str, Any] = {"n_images": n_rand}
    rand_maps: dict[str, np.ndarray] = {}
    if n_rand > 0 and rp.scopes:
        # round-robin over groups, so every group is represented
        sub = np.argsort(sel["rank"].to_numpy(), kind="stable")[:n_rand]
        t0 = time.perf_counter()
        for scope in rp.scopes:
            rmodel = randomized_model(model, scope, seed=seed)
            r_occ = _occlusion_maps(rmodel, x[sub], cats[sub], p, progress).numpy()
            r_cam = _gradcam_maps(rmodel, x[sub], cats[sub], p.batch_size).numpy()
            for method, trained, rand in (("occlusion", occ_maps[sub], r_occ),
                                          ("gradcam", cam_maps[sub], r_cam)):
                rho = [rank_correlation(a, b) for a, b in zip(trained, rand)]
                rand_metrics.setdefault(method, {})[scope] = {
                    "spearman": summarize(rho), "per_image": rho,
                    "constant_maps": int(np.sum(~np.isfinite(rho)))}
                rand_maps[f"{method}_{scope}"] = rand
            del rmodel
        rand_metrics["images"] = sel["index"].to_numpy()[sub].tolist()
        timing["randomization_s"] = time.perf_counter() - t0

    # -- shortcut probe: border band blanked
    sp = p.shortcut
    t0 = time.perf_counter()
    shortcut = border_probe(classifier, data.images, data.labels, normalization=normalization,
                            bands=list(sp.bands), value=int(round(p.baseline * 255)),
                            input_size=size, patients=data.patients, batch_size=p.batch_size,
                            n_boot=sp.n_boot, seed=seed, logits_plain=logits)
    timing["shortcut_s"] = time.perf_counter() - t0

    files = data.meta["file"].to_numpy()
    metrics = {
        "data_source": source,
        "task": task, "arch": meta["arch"], "model": str(model_path),
        "class_names": class_names, "split": p.split, "n_split_images": len(data),
        "input_size": size, "seed": seed, "device": dev.type, "threads": torch.get_num_threads(),
        "params": p.as_dict(),
        "target": "predicted class: softmax probability (occlusion, faithfulness), "
                  "logit (Grad-CAM)",
        "selection": {
            "n_images": int(len(sel)),
            "groups": sel["group"].value_counts(sort=False).to_dict(),
            "images": [{"index": int(r.index), "file": str(files[r.index]), "group": r.group,
                        "label": class_names[r.label], "pred": class_names[r.pred],
                        "p_pred": float(probs[r.index, r.pred])}
                       for r in sel.itertuples()],
        },
        "faithfulness": faith_metrics,
        "lung_share": lung_metrics,
        "randomization": rand_metrics,
        "shortcut": shortcut,
    }

    # -- outputs
    x_np = x[:, 0].cpu().numpy()
    np_maps = {
        "index": idx, "label": sel["label"].to_numpy(), "pred": cats,
        "p_pred": probs[idx, cats], "images": (x_np * 255).round().astype(np.uint8),
        "occlusion": occ_maps.astype(np.float16), "gradcam": cam_maps.astype(np.float16),
        "lung_mask": masks_sel, "template_mask": template,
        **{f"random_{k}": v.astype(np.float16) for k, v in rand_maps.items()},
    }
    Path(maps_path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(maps_path, **np_maps)
    titles = {"task": task, "arch": meta["arch"], "data_source": source}
    info = sel.assign(p_pred=probs[idx, cats]).reset_index(drop=True)
    plots.save(plots.overlay_grid(x_np, occ_maps, masks_sel, info, class_names, "occlusion",
                                  **titles), figures["occlusion"])
    plots.save(plots.overlay_grid(x_np, normalize_map(torch.from_numpy(cam_maps)).numpy(),
                                  masks_sel, info, class_names, "gradcam", **titles),
               figures["gradcam"])
    plots.save(plots.comparison_figure(x_np, maps, masks_sel, info, class_names, **titles),
               figures["comparison"])
    plots.save(plots.lung_share_figure(shares, sample_shares, class_names, **titles),
               figures["lung_share"])
    plots.save(plots.faithfulness_figure(faith_metrics, **titles), figures["faithfulness"])
    write_json(metrics, metrics_path)
    log.info("explain %s/%s done -> %s; seconds: %s", task, meta["arch"], metrics_path,
             {k: round(v, 2) for k, v in timing.items()})
    return metrics
