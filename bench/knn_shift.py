"""k-NN on the penultimate embeddings under a change of acquisition: which neighbour rule keeps
up with the network head, scored on val and the synthetic-shift proxies, never on the shifted
held-out set.

The pipeline's k-NN (``tsne_knn``) indexes the training embeddings and votes among the ``k``
nearest; on the shifted held-out set it lost 8 points to the head (84.3% vs 92.7%) while it
matched it in distribution. Two reasons are candidates: the votes follow the training class
ratio (about 3 pneumonia : 1 normal), so an embedding that drifts away from both clusters is
called pneumonia; and a shift moves every embedding by a common offset that a raw distance
reads as distance to the larger cluster. The rules compared, each with ``k`` and the distance
chosen on val by balanced accuracy as the pipeline does (``knn.select_knn``):

- ``shipped``: uniform votes over the raw embeddings (cosine or euclidean);
- ``prior``: each neighbour's vote divided by its class's share of the training set;
- ``centred``: embeddings centred on the training mean and L2-normalised before the distance
  (SimpleShot's CL2N);
- ``centred_prior``: both;
- ``centroid``: the nearest class mean of the centred, normalised training embeddings (no k).

Each model is one of ``recipe_ablation.py``'s (``--workdir`` of that run: its ``processed/``
and ``models/<arch>_base_seed<N>/``). Proxy A is ``operating_point.py``'s (val under another
exposure), proxy D ``recipe_ablation.py``'s (val post-processed another way); both were
defined before any look at the shifted set. The head is scored at argmax after the val
temperature. Criterion, fixed before the run: the mean over seeds of the mean of val and
proxy-A accuracy; a rule replaces ``shipped`` only if it gains more than 1 point there and
loses nothing on proxy D.

    python bench/knn_shift.py --workdir /tmp/knn --seeds 1 2 3 \\
        --out bench/results/knn_shift_64px.json

``--variants base cosine_head_16`` scores each variant's models (``recipe_ablation.py``'s
``models/<arch>_<variant>_seed<N>/``) and adds, per variant, the paired (by seed) change
against ``base`` of each rule's criterion and of the head-to-k-NN gap.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from _common import write
from operating_point import PROXY, proxy_images
from pneumocxr.calibration import load_calibration
from pneumocxr.config import complete
from pneumocxr.data.arrays import load_split
from pneumocxr.embed import extract_embeddings
from pneumocxr.knn import CRITERIA, make_classifier, select_knn
from pneumocxr.logits import probabilities
from pneumocxr.models import load_model
from pneumocxr.utils import set_threads
from recipe_ablation import PROCESSING, model_path, processing_images

RULES = ("shipped", "prior", "centred", "centred_prior", "centroid")
SETS = ("val", "proxy", "processing", "test")


def centre(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Subtract the training mean and scale every row to unit length (CL2N)."""
    mean = train.mean(axis=0, keepdims=True)
    out = []
    for x in (train, *others):
        c = x - mean
        out.append(c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12))
    return out


def prior_predict(clf, x: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Votes divided by each class's training share, then the largest."""
    return clf.classes_[np.argmax(clf.predict_proba(x) / prior[clf.classes_], axis=1)]


def select_prior(train_x, train_y, val_x, val_y, knn: dict, prior) -> tuple[int, str]:
    """``select_knn``'s candidates, criterion and tie rule with prior-corrected votes."""
    score_fn, best = CRITERIA[knn["select_by"]], None
    for k in sorted(knn["k"]):
        for metric in knn["metrics"]:
            clf = make_classifier(k, metric, knn["weights"]).fit(train_x, train_y)
            score = score_fn(val_y, prior_predict(clf, val_x, prior))
            if best is None or score > best[0]:
                best = (score, k, metric)
    return best[1], best[2]


def rule_predictions(rule: str, emb: dict[str, np.ndarray], y: dict[str, np.ndarray],
                     knn: dict) -> tuple[dict[str, np.ndarray], dict]:
    """Predictions of one rule on every set, fitted on train and chosen on val."""
    names = ["train", *SETS]
    x = emb
    if rule in ("centred", "centred_prior", "centroid"):
        x = dict(zip(names, centre(*(emb[n] for n in names))))
    ty = y["train"]
    prior = np.bincount(ty) / len(ty)
    if rule == "centroid":
        means = np.stack([x["train"][ty == c].mean(axis=0) for c in range(len(prior))])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        return {n: np.argmax(x[n] @ means.T, axis=1) for n in SETS}, {}
    if rule.endswith("prior"):
        k, metric = select_prior(x["train"], ty, x["val"], y["val"], knn, prior)
        clf = make_classifier(k, metric, knn["weights"]).fit(x["train"], ty)
        return {n: prior_predict(clf, x[n], prior) for n in SETS}, {"k": k, "metric": metric}
    sel = select_knn(x["train"], ty, x["val"], y["val"], ks=knn["k"], metrics=knn["metrics"],
                     criterion=knn["select_by"], weights=knn["weights"])
    clf = make_classifier(sel.k, sel.metric, knn["weights"]).fit(x["train"], ty)
    return {n: clf.predict(x[n]) for n in SETS}, {"k": sel.k, "metric": sel.metric}


def score(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {"accuracy": round(float((pred == y).mean()), 4),
            "balanced_accuracy": round(float(balanced_accuracy_score(y, pred)), 4),
            "specificity": round(float((pred[y == 0] == 0).mean()), 4)}


def one_model(model_path: Path, images: dict[str, np.ndarray], y: dict[str, np.ndarray],
              knn: dict, batch_size: int) -> dict:
    net, meta = load_model(model_path)
    temperature = float(load_calibration(model_path.parent / "calibration.json")["temperature"])
    emb, head = {}, {}
    for name, imgs in images.items():
        e, logits = extract_embeddings(net, imgs, batch_size=batch_size,
                                       normalization=meta["normalization"],
                                       input_size=int(meta["input_size"]), progress=False,
                                       return_logits=True)
        emb[name] = e
        head[name] = probabilities(logits, temperature).argmax(axis=1)
    out = {"head": {n: score(y[n], head[n]) for n in SETS}}
    for rule in RULES:
        preds, chosen = rule_predictions(rule, emb, y, knn)
        out[rule] = {**{n: score(y[n], preds[n]) for n in SETS}, "chosen": chosen}
        logging.info("%s %s: %s", model_path.parent.name, rule, out[rule])
    return out


def summarise(per_seed: dict[int, dict]) -> dict:
    rows = {}
    seeds = sorted(per_seed)
    for rule in ("head", *RULES):
        row = {}
        for n in SETS:
            vals = [per_seed[s][rule][n]["accuracy"] for s in seeds]
            row[f"{n}_accuracy"] = round(statistics.fmean(vals), 4)
        crit = [(per_seed[s][rule]["val"]["accuracy"] + per_seed[s][rule]["proxy"]["accuracy"])
                / 2 for s in seeds]
        row["criterion"] = round(statistics.fmean(crit), 4)
        rows[rule] = row
    base = rows["shipped"]
    for rule in RULES[1:]:
        r = rows[rule]
        r["criterion_delta"] = round(r["criterion"] - base["criterion"], 4)
        r["adopt"] = bool(r["criterion_delta"] > 0.01
                          and r["processing_accuracy"] >= base["processing_accuracy"])
    return rows


def versus_base(per_variant: dict[str, dict[int, dict]], variant: str) -> dict:
    """Paired (by seed) ``variant`` - ``base``: each rule's criterion, the shipped k-NN's
    proxy-D accuracy, and the gap between the head and the shipped k-NN on val and proxy A."""
    seeds = sorted(set(per_variant[variant]) & set(per_variant["base"]))

    def crit(run: dict, rule: str) -> float:
        return (run[rule]["val"]["accuracy"] + run[rule]["proxy"]["accuracy"]) / 2

    def mean_delta(fn) -> float:
        return round(statistics.fmean(fn(per_variant[variant][s]) - fn(per_variant["base"][s])
                                      for s in seeds), 4)

    out = {"seeds_paired": seeds}
    for rule in ("head", *RULES):
        out[f"{rule}_criterion_delta"] = mean_delta(lambda r, rule=rule: crit(r, rule))
    out["shipped_processing_accuracy_delta"] = mean_delta(
        lambda r: r["shipped"]["processing"]["accuracy"])
    out["head_minus_shipped_gap_delta"] = mean_delta(
        lambda r: crit(r, "head") - crit(r, "shipped"))
    out["adopt_for_knn"] = bool(out["shipped_criterion_delta"] > 0.01
                                and out["shipped_processing_accuracy_delta"] >= 0)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True,
                    help="a recipe_ablation.py --workdir (processed/ and models/ inside)")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--variants", nargs="+", default=["base"],
                    help="recipe_ablation.py variants whose models to score (base first)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--copies", type=int, default=2, help="proxy copies of each val image")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="JSON summary to write")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    processed = work / "processed"
    if args.variants[0] != "base":
        ap.error("--variants: base comes first (the others are compared with it)")
    models = {(v, s): model_path(work, args.arch, v, s) for v in args.variants for s in args.seeds}
    missing = [str(p) for p in models.values() if not p.is_file()]
    if not (processed / "info.json").is_file() or missing:
        ap.error(f"--workdir {work}: needs processed/info.json and {missing or 'the models'} "
                 f"(run bench/recipe_ablation.py --variants {' '.join(args.variants)} with "
                 "that --workdir first)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_threads(args.threads)
    splits = {n: load_split(processed, n, "plain") for n in ("train", "val", "test")}
    proxy_seed = 2026
    val = splits["val"]
    images = {"train": splits["train"].images, "val": val.images,
              "proxy": proxy_images(val.images, args.copies, proxy_seed),
              "processing": processing_images(np.tile(val.images, (args.copies, 1, 1)),
                                              proxy_seed),
              "test": splits["test"].images}
    y = {n: np.asarray(splits[n].y_binary) for n in ("train", "val", "test")}
    y["proxy"] = y["processing"] = np.tile(y["val"], args.copies)
    knn = complete("embed", {})["knn"]
    per_variant = {v: {s: one_model(models[v, s], images, y, knn, args.batch_size)
                       for s in args.seeds} for v in args.variants}
    per_seed = per_variant["base"]
    payload = {
        "what": (f"binary {args.arch} (recipe_ablation.py base models), k-NN rules on the "
                 "penultimate embeddings against the head; accuracy at argmax; test is the "
                 "in-distribution dev test; the shifted held-out set is not read"),
        "workdir_models": {f"{v}_seed{s}": str(p) for (v, s), p in models.items()},
        "variants": args.variants,
        "threads": torch.get_num_threads(),
        "knn_candidates": knn,
        "proxy": {"definition": PROXY, "copies": args.copies, "seed": proxy_seed},
        "processing_proxy": {"definition": PROCESSING, "seed": proxy_seed},
        "selection": ("mean over seeds of (val accuracy + proxy-A accuracy) / 2; adopt if "
                      "> shipped + 0.01 and proxy-D accuracy not below shipped"),
        "per_seed": per_seed,
        "summary": summarise(per_seed),
    }
    for v in args.variants[1:]:
        payload.setdefault("variants_per_seed", {})[v] = per_variant[v]
        payload.setdefault("variants_summary", {})[v] = {
            "rules": summarise(per_variant[v]), "versus_base": versus_base(per_variant, v)}
    write(args.out, payload)
    print(json.dumps(payload["summary"], indent=1))
    return payload


if __name__ == "__main__":
    main()
