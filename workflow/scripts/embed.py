"""Embed the train/val/test images with a trained classifier (one task, one architecture).

Inputs:  processed=data/processed  model=models/{task}/{arch}/best.pt
Outputs: embeddings=results/embed/{task}/{arch}/embeddings.npz
Params:  embed (batch_size, channels_last, progress), device
"""

from pneumocxr.embed import run_embed
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    cfg = io.params["embed"]
    run_embed(
        io.input["model"],
        io.input["processed"],
        io.output["embeddings"],
        batch_size=cfg["batch_size"],
        device=io.params.get("device", "auto"),
        progress=cfg.get("progress", True),
        channels_last=cfg.get("channels_last", True),
    )
