"""Write the run's resolved params (every default filled in) after validating them.

Inputs:  none (the params file)
Outputs: params=results/params.json
Params:  all (every key but the display-only ``progress``)

Under DVC this stage depends on every key of params.yaml, and the DVC route validates the
whole file (and the keys that decide which stages exist) before any stage runs, so a typo
stops ``dvc repro`` even when no other stage reads the edited key.
"""

from pneumocxr.stage import stage_io
from pneumocxr.utils import write_json

io = stage_io(globals())
with io.logging():
    write_json(io.params["all"], io.output["params"])
