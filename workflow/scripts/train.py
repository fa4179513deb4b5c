"""Train one classifier (one task, one architecture) on the prepared arrays.

Inputs:  processed=data/processed
         init=models/binary/{arch}/best.pt   (3-class task only: start from the binary model)
Outputs: model=models/{task}/{arch}/best.pt
         history=results/classify/{task}/{arch}/history.csv
Params:  train, seed, device; task and arch (optional; default: the model path
         models/{task}/{arch}/best.pt names them)
Resume:  .cache/resume/train/{task}/{arch}/<key>/ (PNEUMOCXR_RESUME_DIR moves it); rerunning
         the same command after an interruption continues from the last finished epoch.
"""

from pneumocxr.stage import stage_io
from pneumocxr.train import run_training, task_arch_from_path

io = stage_io(globals())
with io.logging():
    task, arch = task_arch_from_path(io.output["model"])
    run_training(
        io.input["processed"],
        io.output["model"],
        io.output["history"],
        task=io.params.get("task", task),
        arch=io.params.get("arch", arch),
        train_params=io.params["train"],
        seed=io.params["seed"],
        device=io.params.get("device", "auto"),
        init=io.input.get("init"),
    )
