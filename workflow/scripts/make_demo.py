"""make_demo: write the embedded synthetic demo data set in the Kaggle layout.

``data.source: demo`` reads it from ``data/demo/chest_xray``. Snakemake runs this through
``script:`` (rule ``make_demo``: ``output: root``, ``params: demo``); DVC runs it as::

    python workflow/scripts/make_demo.py --rule make_demo --output root=data/demo/chest_xray \
        --log logs/make_demo.log --params demo

``params.yaml`` section ``demo``: ``n_train, n_test, n_val, size, seed``.
"""

from pneumocxr.data.demo import generate_demo
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    generate_demo(io.output["root"], **io.params["demo"], progress=io.progress)
