"""Evaluate every model of the run on one external test set (nothing is fitted on it).

Wildcards: set
Inputs:  prepared=data/external/{set}  report=results/external/{set}/data.json
         model_<task>_<arch>, calibration_<task>_<arch>, knn_<task>_<arch> (each classifier)
         anomaly_model=models/autoencoder/best.pt  anomaly_state=results/anomaly/score_state.pt
Outputs: metrics=results/external/{set}/metrics.json  predictions=.../predictions.csv
         roc=.../roc.png
Params:  evaluate (n_boot, ece_bins, batch_size), explain (shortcut, lung_mask,
         share_n_per_class), seed, device
"""

from pneumocxr.external import ClassifierFiles, run_external_evaluation
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    keys = sorted(k.removeprefix("model_") for k in io.input if k.startswith("model_"))
    classifiers = [ClassifierFiles(task=k.rsplit("_", 1)[0], arch=k.rsplit("_", 1)[1],
                                   model=io.input[f"model_{k}"],
                                   calibration=io.input[f"calibration_{k}"],
                                   knn_index=io.input.get(f"knn_{k}"))
                   for k in keys]
    explain = io.params["explain"]
    run_external_evaluation(
        io.input["prepared"],
        io.input["report"],
        classifiers,
        io.output,
        anomaly=(io.input["anomaly_model"], io.input["anomaly_state"]),
        evaluate=io.params["evaluate"],
        shortcut=explain["shortcut"],
        lung_mask=explain["lung_mask"],
        share_n_per_class=explain["share_n_per_class"],
        seed=io.params["seed"],
        device=io.params["device"],
        progress=io.progress,
    )
