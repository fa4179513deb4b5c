"""The geometry-only baseline: the class from the original image size alone (a measure of the
acquisition shortcut; pneumocxr.geometry).

Inputs:  processed=data/processed  manifest=<geometry.manifest> (when set)
Outputs: metrics=results/shortcut/geometry.json
Params:  geometry (manifest, folds), evaluate (n_boot), seed
"""

from pneumocxr.geometry import run_geometry_baseline
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    run_geometry_baseline(io.input["processed"], io.output["metrics"], io.params["geometry"],
                          n_boot=io.params["evaluate"]["n_boot"], seed=io.params["seed"])
