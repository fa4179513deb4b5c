"""Train the convolutional autoencoder of the anomaly detector on NORMAL train images.

Inputs:  processed=data/processed
Outputs: model=models/autoencoder/best.pt
         history=results/anomaly/history.csv
Params:  anomaly (model, train), seed, device
Resume:  .cache/resume/anomaly/autoencoder/<key>/ (PNEUMOCXR_RESUME_DIR moves it); rerunning
         the same command after an interruption continues from the last finished epoch.
"""

from pneumocxr.anomaly.train import run_autoencoder_training
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    run_autoencoder_training(
        io.input["processed"],
        io.output["model"],
        io.output["history"],
        params=io.params["anomaly"],
        seed=io.params["seed"],
        device=io.params["device"],
        progress=io.progress,
    )
