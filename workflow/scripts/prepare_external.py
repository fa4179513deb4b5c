"""Prepare one external test set like the training images (evaluation only).

Wildcards: set
Inputs:  raw (the set's files)  processed=data/processed (the training images' preprocessing
         and sha256s: an image also in the training data is excluded, with a report)
Outputs: prepared=data/external/{set}  report=results/external/{set}/data.json
         rejected=results/external/{set}/rejected.csv
Params:  external.<set>, data (min_side, max_pixels)
"""

from pneumocxr.data.external import ExternalSet, prepare_external
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    name = io.wildcards["set"]
    prepare_external(
        ExternalSet.from_params(name, io.params["external"][name]),
        io.input["processed"],
        io.output["prepared"],
        io.output["report"],
        io.output["rejected"],
        min_side=io.params["data"]["min_side"],
        max_pixels=io.params["data"]["max_pixels"],
        threads=io.threads,
        progress=io.progress,
    )
