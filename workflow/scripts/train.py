"""Train one classifier (one task, one architecture) on the prepared arrays.

Wildcards: task (binary | three_class), arch
Inputs:  processed=data/processed
         init=models/binary/{arch}/best.pt   (three-class task only: start from the binary model)
Outputs: model=models/{task}/{arch}/best.pt
         history=results/classify/{task}/{arch}/history.csv
         val_predictions=results/classify/{task}/{arch}/val_predictions.csv   (for calibrate)
Params:  seed, device, train (the recipe keys, train.<task> and train.per_arch.<arch>;
         train.weights for binary)
Resume:  .cache/resume/train/{task}/{arch}/<key>/ (PNEUMOCXR_RESUME_DIR moves it); rerunning
         the same command after an interruption continues from the last finished epoch.
"""

from pneumocxr.stage import stage_io
from pneumocxr.train import run_training

io = stage_io(globals())
with io.logging():
    task = io.wildcards["task"]
    run_training(
        io.input["processed"],
        io.output,
        task=task,
        arch=io.wildcards["arch"],
        train_params=io.params["train"],
        seed=io.params["seed"],
        device=io.params["device"],
        init=io.input.get("init") or io.params["train"].get("weights", "none"),
        progress=io.progress,
    )
