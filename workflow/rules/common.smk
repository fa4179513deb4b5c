# Shared helpers of the rules: validated config, the keys each step reads, the library code
# each script runs, raw-data inputs, the list of final targets.

from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from pneumocxr.config import (
    ARCH_OVERRIDES,
    NOT_RECIPE,
    ParamsError,
    dag_structure,
    select,
    validate,
    without_display,
)
from pneumocxr.data.external import ExternalSet
from pneumocxr.data.external import raw_files as external_files
from pneumocxr.data.sources import DataLayoutError, raw_data_files
from pneumocxr.errors import PneumocxrError
from pneumocxr.codedeps import CodeDepsError, code_deps

# The package's validator (the schema shipped in pneumocxr: every key's default, type and
# range, plus the cross-field checks) is the one the DVC route uses too, so both engines
# accept and reject the same params with the same message, before anything runs.
try:
    validate(config)
except ParamsError as err:
    raise WorkflowError(str(err)) from None

DATA_SOURCE = config["data"]["source"]
DEMO_ROOT = "data/demo/chest_xray"
DEMO_SITE_ROOT = "data/demo/site2"
EXTERNAL = config["external"]
PROCESSED = "data/processed"
MODELS = "results/models"
# The params that decide which jobs exist (architectures, tasks); dvc.yaml is generated for
# one value of them (pneumocxr.workflow_sync).
STRUCTURE = dag_structure(config)
ARCHS = STRUCTURE["archs"]
# Sources without bacteria/virus subtypes (medmnist) have no three-class task: its stages are
# left out of `all` (with a message), never run on wrong labels.
TASKS = STRUCTURE["tasks"]
# train.joint_head: the binary model is the joint three-class network folded (fold_binary),
# not a network of its own, and the three-class network is trained from train.weights.
JOINT = STRUCTURE["joint_head"] == ["true"]
if "three_class" not in TASKS:
    logger.warning(
        f"data.source={DATA_SOURCE} has no bacteria/virus subtypes: "
        "the three-class stages are skipped"
    )


wildcard_constraints:
    task="binary|three_class",
    arch="[a-z0-9_]+",
    set="[a-z][a-z0-9_]*",


ENV = "../envs/pneumocxr.yaml"


def pick(*keys):
    """The nested part of the config holding exactly these dotted keys (what a step reads).

    A rule passes one param per top-level section, e.g. ``embed=pick("embed.tsne", ...)
    ["embed"]``, so an edit to any other key does not rerun it; dvc.yaml lists the same keys.
    """
    return select(config, keys)


def section(name, *keys):
    """``pick`` of keys within one section, e.g. ``section("anomaly", "model", "train")``."""
    return pick(*(f"{name}.{k}" for k in keys))[name]


def train_recipe(task, arch):
    """What training a task reads: the shared recipe keys of ``train``, ``train.<task>`` and
    ``train.per_arch.<arch>`` (no other architecture's block); the binary model also
    ``train.weights`` (the three-class one starts from the binary). With ``train.joint_head``
    only the three-class network is trained, from ``train.weights`` with ``train.binary``."""
    keys = [k for k in config["train"] if k not in NOT_RECIPE]
    if JOINT:
        return section("train", *keys, "binary", f"{ARCH_OVERRIDES}.{arch}", "weights",
                       "joint_head")
    keys += [task, f"{ARCH_OVERRIDES}.{arch}"]
    return section("train", *keys, *(["weights"] if task == "binary" else []))


def history_of(wildcards):
    """The training curves of a task's model: the joint network's for both with
    ``train.joint_head`` (the binary model is not trained on its own)."""
    task = "three_class" if JOINT else wildcards.task
    return f"results/classify/{task}/{wildcards.arch}/history.csv"


def code(script):
    """The library modules ``workflow/scripts/<script>`` imports (its import closure within
    src/pneumocxr), as inputs: editing one reruns exactly the steps that run it."""
    try:
        return code_deps(f"workflow/scripts/{script}")
    except CodeDepsError as err:
        raise WorkflowError(str(err)) from None


def _raw_inputs():
    """Every raw image (or the .npz) under data.root, so replacing one file reruns prepare.

    The demo folder is an output of make_demo, so it is returned whole for the DAG to link.
    A missing or malformed data folder stops the workflow here, before anything runs.
    """
    root = config["data"]["root"]
    if DATA_SOURCE == "demo" and Path(root) == Path(DEMO_ROOT):
        return [root]
    try:
        return raw_data_files(DATA_SOURCE, root)
    except DataLayoutError as err:
        raise WorkflowError(str(err)) from None


RAW_INPUTS = _raw_inputs()


def external_raw(wildcards):
    """Every file of one external set (the demo's second site is make_demo_site's folder)."""
    spec = EXTERNAL[wildcards.set]
    if Path(spec["path"]) == Path(DEMO_SITE_ROOT):
        return [DEMO_SITE_ROOT]
    try:
        files = external_files(ExternalSet.from_params(wildcards.set, spec))
    except PneumocxrError as err:
        raise WorkflowError(f"external.{wildcards.set}: {err}") from None
    if not files:
        raise WorkflowError(f"external.{wildcards.set}: no image files under {spec['path']}")
    return files


def geometry_inputs(wildcards=None):
    """The size manifest of geometry_baseline, when params name one."""
    manifest = config["geometry"]["manifest"]
    return {"manifest": manifest} if manifest else {}


def external_eval_inputs(wildcards):
    """What evaluate_external reads: every classifier with its operating point and k-NN
    index, and the anomaly detector with its fitted score and threshold."""
    inputs = {
        "anomaly_model": f"{MODELS}/autoencoder/best.pt",
        "anomaly_state": "results/anomaly/score_state.pt",
    }
    for task in TASKS:
        for arch in ARCHS:
            key = f"{task}_{arch}"
            inputs[f"model_{key}"] = f"{MODELS}/{task}/{arch}/best.pt"
            inputs[f"calibration_{key}"] = f"{MODELS}/{task}/{arch}/calibration.json"
            inputs[f"knn_{key}"] = f"{MODELS}/{task}/{arch}/knn_index.npz"
    return inputs


def classifier_metrics(wildcards=None):
    """Every trained classifier's metrics JSON, named ``<task>_<arch>``."""
    return {
        f"{task}_{arch}": f"results/classify/{task}/{arch}/metrics.json"
        for task in TASKS
        for arch in ARCHS
    }


def summary_inputs(wildcards=None):
    """Inputs of the summary rule, named as pneumocxr.report expects (kind_task_arch)."""
    inputs = {
        "data": "results/data/summary.json",
        "processed": PROCESSED,
        "anomaly": "results/anomaly/metrics.json",
        "anomaly_scores": "results/anomaly/scores.csv",
        "anomaly_model": f"{MODELS}/autoencoder/best.pt",
        "external_sets": "results/external/sets.json",
        "geometry": "results/shortcut/geometry.json",
        "code": code("summary.py"),
    }
    for name in EXTERNAL:
        inputs[f"external_{name}"] = f"results/external/{name}/metrics.json"
        inputs[f"external_data_{name}"] = f"results/external/{name}/data.json"
    for task in TASKS:
        for arch in ARCHS:
            key = f"{task}_{arch}"
            inputs[f"classify_{key}"] = f"results/classify/{task}/{arch}/metrics.json"
            inputs[f"predictions_{key}"] = (
                f"results/classify/{task}/{arch}/predictions.csv"
            )
            inputs[f"explain_{key}"] = f"results/explain/{task}/{arch}/metrics.json"
            inputs[f"embed_{key}"] = f"results/embed/{task}/{arch}/metrics.json"
            inputs[f"model_{key}"] = f"{MODELS}/{task}/{arch}/best.pt"
    return inputs


def all_targets():
    return [
        "results/params.json",
        "results/data/summary.json",
        "results/data/overview.png",
        *classifier_metrics().values(),
        "results/classify/model_comparison.png",
        *expand("results/embed/{task}/{arch}/metrics.json", task=TASKS, arch=ARCHS),
        "results/anomaly/metrics.json",
        *expand("results/explain/{task}/{arch}/metrics.json", task=TASKS, arch=ARCHS),
        "results/external/sets.json",
        *expand("results/external/{set}/metrics.json", set=list(EXTERNAL)),
        # last: the run summary and model card, made from everything above
        "results/summary.json",
        "results/summary.md",
        "results/MODEL_CARD.md",
    ]
