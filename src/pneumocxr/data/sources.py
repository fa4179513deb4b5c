"""Where raw data comes from: the layout each ``data.source`` expects, and its file list.

Both engines call :func:`raw_data_files` before anything runs: Snakemake to know which files
``prepare`` depends on (so replacing one raw image reruns it), the CLI to fail early with a
message that says what to do.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
KAGGLE_SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")  # the Mendeley download has no val folder
KAGGLE_CLASSES = ("NORMAL", "PNEUMONIA")

LAYOUT_HELP = """\
expected the Kaggle "Chest X-Ray Images (Pneumonia)" layout:
    {root}/{{train,val,test}}/{{NORMAL,PNEUMONIA}}/*.jpeg   (val optional)
Get it from Kaggle (paultimothymooney/chest-xray-pneumonia) or Mendeley Data
(doi:10.17632/rscbjbr9sj.2) and put (or symlink) the chest_xray folder there, or set data.root.
No data at hand? Run the embedded synthetic demo instead:
    make demo      (or: snakemake --cores 2 all --configfile config/demo.yaml)"""


class DataLayoutError(InputError):
    """The raw data folder is missing or not in the expected layout."""


def raw_data_files(source: str, root: str | Path) -> list[str]:
    """Sorted list of the raw files ``prepare`` reads for ``source`` under ``root``.

    Raises :class:`DataLayoutError` naming the path, the expected layout and the alternatives.
    """
    root = Path(root)
    if source == "medmnist":
        if not root.is_file():
            raise DataLayoutError(
                f"{root}: PneumoniaMNIST .npz file not found (data.source: medmnist expects "
                "data.root to be a .npz with {train,val,test}_images and _labels; get it from "
                "MedMNIST v2, pneumoniamnist.npz)"
            )
        return [str(root)]
    if source not in ("kermany", "demo"):
        raise DataLayoutError(f"unknown data.source {source!r}; use kermany, medmnist or demo")
    if not root.is_dir():
        raise DataLayoutError(f"{root}: data folder not found; " + LAYOUT_HELP.format(root=root))
    missing = [f"{s}/{c}" for s in REQUIRED_SPLITS for c in KAGGLE_CLASSES
               if not (root / s / c).is_dir()]
    if missing:
        raise DataLayoutError(
            f"{root}: missing sub-folders {', '.join(missing)}; " + LAYOUT_HELP.format(root=root)
        )
    files = sorted(
        str(p)
        for s in KAGGLE_SPLITS
        for c in KAGGLE_CLASSES
        if (root / s / c).is_dir()
        for p in (root / s / c).iterdir()
        if p.is_file() and not p.name.startswith(".")
    )
    return files
