"""The external test sets of the run (params external), for the summary and the report.

Outputs: sets=results/external/sets.json   ({name: {path, labels, npz_split}}; {} when none)
Params:  external
"""

from pneumocxr.stage import stage_io
from pneumocxr.utils import write_json

io = stage_io(globals())
with io.logging() as log:
    write_json(io.params["external"], io.output["sets"])
    log.info("external test sets: %s", ", ".join(io.params["external"]) or "none")
