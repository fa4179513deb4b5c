# Shared helpers of the rules: validated config, raw-data inputs, the list of final targets.

from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from pneumocxr.config import ParamsError, validate
from pneumocxr.data.sources import DataLayoutError, raw_data_files

# The package's validator (jsonschema + the defaults and cross-field checks of
# workflow/schemas/params.schema.yaml) is the one that DVC's route uses too, so both engines
# accept and reject the same params with the same message.
try:
    validate(config)
except ParamsError as err:
    raise WorkflowError(str(err)) from None

DATA_SOURCE = config["data"]["source"]
DEMO_ROOT = "data/demo/chest_xray"
PROCESSED = "data/processed"
MODELS = "results/models"
ARCHS = list(config["train"]["archs"])
# Sources without bacteria/virus subtypes (medmnist) have no 3-class task: its stages are
# left out of `all` (with a message), never run on wrong labels.
TASKS = ["binary", "3class"] if DATA_SOURCE != "medmnist" else ["binary"]
if "3class" not in TASKS:
    logger.warning(
        f"data.source={DATA_SOURCE} has no bacteria/virus subtypes: "
        "the 3-class stages are skipped"
    )


wildcard_constraints:
    task="binary|3class",
    arch="[a-z0-9_]+",


ENV = "../envs/pneumocxr.yaml"


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
    }
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
        "results/data/summary.json",
        "results/data/overview.png",
        *classifier_metrics().values(),
        "results/classify/model_comparison.png",
        *expand("results/embed/{task}/{arch}/metrics.json", task=TASKS, arch=ARCHS),
        "results/anomaly/metrics.json",
        *expand("results/explain/{task}/{arch}/metrics.json", task=TASKS, arch=ARCHS),
        # last: the run summary and model card, made from everything above
        "results/summary.json",
        "results/summary.md",
        "results/MODEL_CARD.md",
    ]
