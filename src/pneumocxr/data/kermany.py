"""The Kermany chest X-ray folder (Kaggle layout): file names, labels, patients, the file list.

Layout (Kaggle ``paultimothymooney/chest-xray-pneumonia``; the Mendeley Data download
doi:10.17632/rscbjbr9sj.2 is the same without ``val``)::

    <root>/{train,val,test}/{NORMAL,PNEUMONIA}/<image file>

The class is the folder. The pneumonia subtype and the patient are in the file name:

- ``person1000_bacteria_2931.jpeg``: PNEUMONIA, bacteria, patient ``person1000_bacteria``
- ``person1000_virus_1681.jpeg``: PNEUMONIA, virus, patient ``person1000_virus``
  (one file has an extra suffix: ``person447_virus_921_1.jpeg``)
- ``IM-0115-0001.jpeg`` or ``IM-XXXX-YYYY-ZZZZ.jpeg``: NORMAL, normal, patient ``IM-0115``
- ``NORMAL2-IM-0383-0001.jpeg`` (``-ZZZZ`` optional): NORMAL, normal, patient
  ``NORMAL2-IM-0383``

A ``personN`` number identifies a patient within its subtype, so the patient key keeps the
subtype (``person1000_bacteria`` and ``person1000_virus`` are different keys, as in the shared
data's manifest); ``IM-XXXX`` and ``NORMAL2-IM-XXXX`` are separate series. Extensions
``.jpeg``, ``.jpg`` and ``.png`` are accepted in any case. A name that fits none of the patterns raises :class:`FileNameError`;
:func:`pneumocxr.data.prepare.prepare` turns that into a rejected row (reason ``bad_name``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import InputError, MissingInputError

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "val", "test")
REQUIRED_SPLIT_FOLDERS = ("train", "test")   # Mendeley's download has no val folder
CLASS_FOLDERS = ("NORMAL", "PNEUMONIA")

EXPECTED_LAYOUT = (
    "expected the Kaggle layout <root>/{train,val,test}/{NORMAL,PNEUMONIA}/<image files> "
    "(val may be absent)"
)
WHERE_FROM = (
    "Get the data from Kaggle (paultimothymooney/chest-xray-pneumonia) or Mendeley Data "
    "(doi:10.17632/rscbjbr9sj.2), unpack it and point params data.root at the folder that "
    "holds train/ and test/; or run the synthetic demo instead: "
    "`snakemake --configfile config/demo.yaml` (or `make demo`)"
)

_EXT = r"\.(?i:jpe?g|png)"
_PERSON = re.compile(rf"^(?P<patient>person\d+_(?P<subtype>bacteria|virus))_\d+(?:_\d+)?{_EXT}$")
_NORMAL2 = re.compile(rf"^(?P<patient>NORMAL2-IM-\d+)-\d+(?:-\d+)?{_EXT}$")
_IM = re.compile(rf"^(?P<patient>IM-\d+)-\d+(?:-\d+)?{_EXT}$")


class FileNameError(InputError):
    """A file name that fits none of the Kermany naming patterns."""


class ParsedName(NamedTuple):
    """What a Kermany file name says: ``label`` (NORMAL/PNEUMONIA), ``subtype``
    (normal/bacteria/virus) and ``patient`` (the patient key)."""

    label: str
    subtype: str
    patient: str


def parse_filename(name: str) -> ParsedName:
    """Parse a Kermany file name (a bare name; a path is reduced to its last part).

    >>> parse_filename("person1000_bacteria_2931.jpeg")
    ParsedName(label='PNEUMONIA', subtype='bacteria', patient='person1000_bacteria')
    >>> parse_filename("NORMAL2-IM-0383-0001.jpeg")
    ParsedName(label='NORMAL', subtype='normal', patient='NORMAL2-IM-0383')

    Raises:
        FileNameError: the name fits no pattern (see the module docstring).
    """
    base = Path(name).name
    m = _PERSON.match(base)
    if m:
        return ParsedName("PNEUMONIA", m["subtype"], m["patient"])
    for pattern in (_NORMAL2, _IM):
        m = pattern.match(base)
        if m:
            return ParsedName("NORMAL", "normal", m["patient"])
    raise FileNameError(
        f"{name!r} fits no Kermany file-name pattern (personN_bacteria_M, personN_virus_M[_K], "
        "IM-XXXX-YYYY[-ZZZZ], NORMAL2-IM-XXXX-YYYY[-ZZZZ]; extension .jpeg/.jpg/.png)"
    )


@dataclass(frozen=True)
class RawFile:
    """One candidate file of the Kaggle layout: ``rel`` is its path relative to the root."""

    path: Path
    rel: str
    split: str       # official split folder: train, val or test
    label: str       # class folder: NORMAL or PNEUMONIA


def _missing_root_error(root: Path) -> MissingInputError:
    return MissingInputError(f"{root}: data folder not found; {EXPECTED_LAYOUT}. {WHERE_FROM}")


def _layout_error(root: Path, problem: str) -> InputError:
    hint = ""
    nested = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / "train").is_dir()]
    if nested:
        hint = f" (did you mean data.root: {nested[0]}?)"
    return InputError(f"{root}: {problem}{hint}; {EXPECTED_LAYOUT}. {WHERE_FROM}")


def scan_kermany(root: str | Path) -> list[RawFile]:
    """List the candidate image files under ``root``, sorted by split, class and name.

    Every regular file in a class folder is a candidate (bad ones are rejected later, with a
    reason); hidden files (``.DS_Store`` and the like) are skipped. Unknown folders next to the
    expected ones are ignored with a warning.

    Raises:
        FileNotFoundError: ``root`` does not exist (names the layout and where to get the data).
        ValueError: the layout is wrong (``train``/``test`` or a class folder is missing) or a
            split/class folder holds no files.
    """
    root = Path(root)
    if not root.exists():
        raise _missing_root_error(root)
    if not root.is_dir():
        raise InputError(
            f"{root}: is a file, not a folder; with data.source kermany or demo, data.root must "
            f"be a folder ({EXPECTED_LAYOUT}); for a PneumoniaMNIST .npz use data.source medmnist"
        )
    missing = [s for s in REQUIRED_SPLIT_FOLDERS if not (root / s).is_dir()]
    if missing:
        raise _layout_error(root, f"missing split folder(s) {', '.join(missing)}")
    files: list[RawFile] = []
    n_hidden = 0
    for split in SPLIT_FOLDERS:
        split_dir = root / split
        if not split_dir.is_dir():
            log.warning("%s: no %s folder; the val_official split will be empty", root, split)
            continue
        extra = sorted(p.name for p in split_dir.iterdir()
                       if p.name not in CLASS_FOLDERS and not p.name.startswith("."))
        if extra:
            log.warning("%s: ignoring unexpected entries %s (expected only %s)", split_dir,
                        extra[:5], "/".join(CLASS_FOLDERS))
        for label in CLASS_FOLDERS:
            class_dir = split_dir / label
            if not class_dir.is_dir():
                raise _layout_error(root, f"missing class folder {class_dir}")
            found = 0
            for path in sorted(class_dir.iterdir()):
                if path.name.startswith("."):
                    n_hidden += 1
                    continue
                if not path.is_file():
                    log.warning("%s: not a regular file, ignored", path)
                    continue
                files.append(RawFile(path, f"{split}/{label}/{path.name}", split, label))
                found += 1
            if found == 0:
                raise _layout_error(root, f"class folder {class_dir} holds no files")
    if n_hidden:
        log.info("%s: skipped %d hidden files (e.g. .DS_Store)", root, n_hidden)
    return files
