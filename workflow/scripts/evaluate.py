"""Evaluate one trained classifier: metrics with patient-bootstrap CIs, calibration, figures.

Wildcards: task, arch
Inputs:  model=models/{task}/{arch}/best.pt  calibration=models/{task}/{arch}/calibration.json
         processed=data/processed  history=results/classify/{task}/{arch}/history.csv
Outputs: metrics=results/classify/{task}/{arch}/metrics.json      (DVC metric)
         predictions=results/classify/{task}/{arch}/predictions.csv
         confusion=.../confusion.png  roc=.../roc.png  reliability=.../reliability.png
         curves=.../curves.png
         folded=.../confusion_folded.png   (three-class task only)
Params:  evaluate, seed
"""

from pneumocxr.evaluate import run_evaluation
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    run_evaluation(
        io.input["model"],
        io.input["processed"],
        io.output,
        task=io.wildcards["task"],
        calibration=io.input["calibration"],
        history_path=io.input.get("history"),
        params=io.params["evaluate"],
        seed=io.params["seed"],
        progress=io.progress,
    )
