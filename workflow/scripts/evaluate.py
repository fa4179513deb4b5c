"""Evaluate one trained classifier: metrics with patient-bootstrap CIs, calibration, figures.

Inputs:  model=models/{task}/{arch}/best.pt  processed=data/processed
         history=results/classify/{task}/{arch}/history.csv
Outputs: metrics=results/classify/{task}/{arch}/metrics.json      (DVC metric)
         predictions=results/classify/{task}/{arch}/predictions.csv
         confusion=.../confusion.png  roc=.../roc.png  reliability=.../reliability.png
         curves=.../curves.png
         folded=.../confusion_folded.png   (3-class task only)
Params:  evaluate, seed; task and arch (optional; default: the model path names them)
"""

from pneumocxr.evaluate import run_evaluation
from pneumocxr.stage import stage_io
from pneumocxr.train import task_arch_from_path

io = stage_io(globals())
with io.logging():
    task, arch = task_arch_from_path(io.input["model"])
    cfg = dict(io.params.get("evaluate") or {})
    progress = bool(cfg.pop("progress", False))
    run_evaluation(
        io.input["model"],
        io.input["processed"],
        io.output,
        task=io.params.get("task", task),
        arch=io.params.get("arch", arch),
        history_path=io.input.get("history"),
        params=cfg,
        seed=io.params["seed"],
        progress=progress,
    )
