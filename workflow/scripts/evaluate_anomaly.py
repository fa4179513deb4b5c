"""Evaluate the autoencoder anomaly detector: score, EER threshold on val, test metrics, figures.

Inputs:  model=models/autoencoder/best.pt  processed=data/processed
Outputs: metrics=results/anomaly/metrics.json          (DVC metric)
         scores=results/anomaly/scores.csv             (val and test scores, flagged or not)
         score_state=results/anomaly/score_state.pt    (fitted score + threshold, for predict)
         reconstructions=results/anomaly/reconstructions.png
         histogram=results/anomaly/score_histogram.png
         roc=results/anomaly/roc.png
Params:  anomaly (score, evaluate), seed, device
"""

from pneumocxr.anomaly.evaluate import run_anomaly_evaluation
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    run_anomaly_evaluation(
        io.input["model"],
        io.input["processed"],
        io.output,
        params=io.params["anomaly"],
        seed=io.params["seed"],
        device=io.params["device"],
        progress=io.progress,
    )
