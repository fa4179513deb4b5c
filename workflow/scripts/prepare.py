"""prepare: raw images (params data.root) -> data/processed (arrays, metadata) + results/data.

Snakemake runs this through ``script:``; DVC runs it as::

    python workflow/scripts/prepare.py --rule prepare --input raw=data/raw/chest_xray \
        --output processed=data/processed summary=results/data/summary.json \
        rejected=results/data/rejected.csv overview=results/data/overview.png \
        --log logs/prepare.log --threads 4 --params data prepare
"""

from pathlib import Path

from pneumocxr.data.prepare import REPORT_FILES, prepare
from pneumocxr.errors import InputError
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    report_dir = Path(io.output["summary"]).parent
    for name, filename in REPORT_FILES.items():
        if Path(io.output[name]) != report_dir / filename:
            raise InputError(
                f"output {name}={io.output[name]}: prepare writes its reports as "
                f"{', '.join(REPORT_FILES.values())} in one folder; "
                f"expected {report_dir / filename}")
    data, prep = io.params["data"], io.params["prepare"]
    # Under Snakemake io.input["raw"] lists every raw file (so replacing one reruns prepare);
    # the folder (or .npz) itself is params data.root, the same on both routes.
    prepare(
        data["source"],
        data["root"],
        io.output["processed"],
        report_dir,
        prepare_params=prep,
        split_seed=data["split_seed"],
        val_fraction=data["val_fraction"],
        min_side=data["min_side"],
        max_pixels=data["max_pixels"],
        threads=io.threads,
        progress=io.progress,
    )
