"""Run summary and model card: headline metrics with 95% CIs next to the published numbers.

Inputs:  data=results/data/summary.json  processed=data/processed (split manifest)
         classify_<task>_<arch>, predictions_<task>_<arch>, explain_<task>_<arch>,
         embed_<task>_<arch>, model_<task>_<arch>: each classifier's stage outputs
         anomaly=results/anomaly/metrics.json  anomaly_scores=results/anomaly/scores.csv
         anomaly_model=results/models/autoencoder/best.pt
Outputs: summary=results/summary.json   (DVC metric)
         markdown=results/summary.md
         model_card=results/MODEL_CARD.md
Params:  evaluate (n_boot: replicates of the re-weighted CIs), report (test_label), seed
"""

from pneumocxr.report import write_report
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    write_report(io.input, io.output, seed=io.params["seed"],
                 n_boot=int(io.params["evaluate"]["n_boot"]),
                 test_label=io.params["report"]["test_label"])
