"""Explain one trained classifier: occlusion and Grad-CAM maps, their faithfulness, the share
of attribution inside the lung fields, a model-randomisation check and the border shortcut probe.

Inputs:  processed=data/processed (plain and clahe variants)  model=models/{task}/{arch}/best.pt
Outputs: metrics=results/explain/{task}/{arch}/metrics.json
         maps=results/explain/{task}/{arch}/maps.npz
         occlusion=results/explain/{task}/{arch}/occlusion.png
         gradcam=results/explain/{task}/{arch}/gradcam.png
         comparison=results/explain/{task}/{arch}/comparison.png
         lung_share=results/explain/{task}/{arch}/lung_share.png
         faithfulness=results/explain/{task}/{arch}/faithfulness.png
Params:  explain, seed, device
"""

from pneumocxr.explain.pipeline import FIGURES, run_explain
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    run_explain(
        io.input["model"],
        io.input["processed"],
        metrics_path=io.output["metrics"],
        maps_path=io.output["maps"],
        figures={name: io.output[name] for name in FIGURES},
        params=io.params["explain"],
        seed=io.params["seed"],
        device=io.params["device"],
        progress=io.progress,
    )
