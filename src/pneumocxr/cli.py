"""Command line: ``pneumocxr <command>``.

Commands:
  params   show the merged, validated params (``--overlay config/X.yaml``), or print them as
           DVC ``-S key=value`` flags (``--dvc-set``) so an overlay runs through DVC too.
  predict  pneumonia probability and label, 3-class probabilities, k-NN vote and anomaly flag
           for image files (JPEG, PNG, DICOM), with the models of a results folder
           (:mod:`pneumocxr.predict`); ``--explain DIR`` adds occlusion / Grad-CAM overlays.
  export   the binary classifier as ONNX, checked against PyTorch (:mod:`pneumocxr.export`).

Exit codes: 0 success; 1 an error stopped the command (bad params, missing or mismatched
models); ``predict`` returns 3 when it ran but at least one file could not be used (its row
says why).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from .config import ParamsError, flatten, load_params, read_yaml
from .errors import PneumocxrError


def dvc_value(key: str, value: Any) -> str:
    """A params value as DVC's ``-S key=value`` override grammar reads it, with no spaces
    (so ``dvc exp run $(pneumocxr params --dvc-set ...)`` survives the shell's word split)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dvc_value(key, v) for v in value) + "]"
    text = str(value)
    if not text or any(c.isspace() or c in "'\"[]{},=" for c in text):
        raise ParamsError(f"{key}: {text!r} cannot be passed as a DVC -S flag through the "
                          "shell; set it in params.yaml instead")
    return text


def _cmd_params(args: argparse.Namespace) -> int:
    if args.dvc_set:
        flags = []
        for overlay in args.overlay:
            for key, value in flatten(read_yaml(overlay)).items():
                flags.append(f"-S {key}={dvc_value(key, value)}")
        load_params(args.params_file, args.overlay)   # the overlay must validate first
        print(" ".join(flags))
        return 0
    params = load_params(args.params_file, args.overlay)
    print(json.dumps(params, indent=2))
    return 0


#: exit code of ``predict`` when some files failed (the others were still predicted)
EXIT_SOME_FAILED = 3


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .predict import explain_files, format_table, load_predictor, predict_files, \
        write_predictions

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = load_predictor(args.models, arch=args.arch, prepared=args.prepared,
                               backend=args.backend)
    for note in predictor.notes:
        print(f"pneumocxr: note: {note}", file=sys.stderr)
    rows = predict_files(predictor, args.paths, batch_size=args.batch_size,
                         min_side=args.min_side, max_pixels=args.max_pixels)
    if not args.quiet:
        print(format_table(rows))
    for out in args.out:
        write_predictions(rows, out, predictor.describe())
        print(f"pneumocxr: wrote {out}", file=sys.stderr)
    if args.explain:
        written = explain_files(predictor, rows, args.explain, min_side=args.min_side,
                                max_pixels=args.max_pixels)
        print(f"pneumocxr: wrote {len(written)} explanation(s) to {args.explain}",
              file=sys.stderr)
    failed = [r for r in rows if not r.ok]
    for r in failed:
        print(f"pneumocxr: {r.file}: {r.error}", file=sys.stderr)
    if failed:
        print(f"pneumocxr: {len(failed)} of {len(rows)} file(s) failed", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    report = export_onnx(args.checkpoint, args.output, opset=args.opset, check=not args.no_check)
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pneumocxr", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="show merged params, or an overlay as DVC -S flags")
    p.add_argument("--params-file", default="params.yaml")
    p.add_argument("--overlay", action="append", default=[], metavar="YAML")
    p.add_argument("--dvc-set", action="store_true",
                   help="print the overlays as `dvc exp run -S key=value` flags")
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser("predict", help="predict on image files (JPEG, PNG, DICOM)",
                       description="Predict on image files, folders (searched recursively for "
                       ".jpeg/.jpg/.png/.dcm/.dicom) or glob patterns with the models of a "
                       "results folder. Exit code 3 when some files failed (each has an error "
                       "row), 1 when the models cannot be loaded.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, folders or globs")
    p.add_argument("--models", default="results", metavar="DIR",
                   help="results folder of a pipeline run (holding models/), default results")
    p.add_argument("--arch", default=None, help="architecture, when several were trained")
    p.add_argument("--prepared", default=None, metavar="DIR",
                   help="prepared-data folder whose info.json gives the preprocessing of "
                   "checkpoints that do not record it (default data/processed beside --models)")
    p.add_argument("--out", action="append", default=[], metavar="FILE",
                   help="write the predictions to FILE (.csv or .json); repeatable")
    p.add_argument("--explain", default=None, metavar="DIR",
                   help="write occlusion and Grad-CAM overlays (one PNG per image) to DIR")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="run the binary classifier with PyTorch or ONNX Runtime (after "
                   "`pneumocxr export`)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--min-side", type=int, default=64,
                   help="reject images with a shorter side under this (data.min_side)")
    p.add_argument("--max-pixels", type=int, default=100_000_000,
                   help="reject larger images as decompression bombs (data.max_pixels)")
    p.add_argument("--quiet", action="store_true", help="no table on the terminal")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export a classifier checkpoint to ONNX",
                       description="Export a best.pt to ONNX (input: normalised image "
                       "batch; outputs: embedding and logits) and check ONNX Runtime against "
                       "PyTorch (max abs difference of the probabilities).")
    p.add_argument("checkpoint", help="e.g. results/models/binary/resnet18/best.pt")
    p.add_argument("--output", default=None, help="default: best.onnx beside the checkpoint")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    p.set_defaults(func=_cmd_export)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except PneumocxrError as err:
        print(f"pneumocxr: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
