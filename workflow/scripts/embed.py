"""Penultimate-layer embeddings (and the head's logits) of every split for one classifier.

Wildcards: task, arch
Inputs:  processed=data/processed  model=models/{task}/{arch}/best.pt
Outputs: embeddings=results/embed/{task}/{arch}/embeddings.npz
Params:  embed (batch_size, channels_last), device
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
        channels_last=cfg["channels_last"],
        device=io.params["device"],
        progress=io.progress,
    )
