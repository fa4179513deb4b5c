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
        # a key params.yaml lacks (e.g. a new external set) is appended: DVC's `+key=value`
        present = flatten(read_yaml(args.params_file))
        flags = []
        for overlay in args.overlay:
            for key, value in flatten(read_yaml(overlay)).items():
                known = key in present or any(k.startswith(key + ".") for k in present)
                flags.append(f"-S {'' if known else '+'}{key}={dvc_value(key, value)}")
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
                               backend=args.backend, calibration=args.calibration)
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


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .predict import load_predictor
    from .site import calibrate_site, write_site_calibration

    predictor = load_predictor(args.models, arch=args.arch, prepared=args.prepared,
                               calibration=args.from_calibration)
    if args.from_calibration is None and predictor.binary.calibration.get("source") == "site":
        # refit from the pipeline's operating point, not from an earlier site fit
        predictor = load_predictor(args.models, arch=args.arch, prepared=args.prepared,
                                   calibration=predictor.binary.path.parent / "calibration.json")
    result = calibrate_site(predictor, args.sample, labels=args.labels, rule=args.rule,
                            target_sensitivity=args.target_sensitivity,
                            halfwidth=args.halfwidth, n_boot=args.n_boot, seed=args.seed,
                            min_side=args.min_side, max_pixels=args.max_pixels)
    path = write_site_calibration(result, predictor, args.out)
    thr, fit, size = result["operating_threshold"], result["fitted_on"], result["sample_size"]
    ci = result["ci"]
    print(f"site operating point: threshold {thr['value']:.4f} ({thr['rule']}) "
          f"[95% CI {ci['threshold']['ci_low']:.4f}, {ci['threshold']['ci_high']:.4f}], "
          f"temperature {result['temperature']:.3f}; pipeline's: "
          f"{result['pipeline_operating_point']['threshold']:.4f}")
    print(f"on the {fit['n_images']} sample images ({fit['n_normal']} normal, "
          f"{fit['n_pneumonia']} pneumonia; in-sample, optimistic): sensitivity "
          f"{thr['site_sensitivity']:.3f} [{ci['sensitivity']['ci_low']:.3f}, "
          f"{ci['sensitivity']['ci_high']:.3f}], specificity {thr['site_specificity']:.3f} "
          f"[{ci['specificity']['ci_low']:.3f}, {ci['specificity']['ci_high']:.3f}]")
    print(f"for a 95% CI of +-{size['target_ci_halfwidth']:.2f}: about "
          f"{size['normal_images_for_specificity']} normal and "
          f"{size['pneumonia_images_for_sensitivity']} pneumonia images")
    print(f"pneumocxr: wrote {path} (predict uses it from now on)", file=sys.stderr)
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
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="the binary model's operating point (default: site_calibration.json "
                   "beside it when `pneumocxr calibrate` wrote one, else calibration.json)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--min-side", type=int, default=64,
                   help="reject images with a shorter side under this (data.min_side)")
    p.add_argument("--max-pixels", type=int, default=100_000_000,
                   help="reject larger images as decompression bombs (data.max_pixels)")
    p.add_argument("--quiet", action="store_true", help="no table on the terminal")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("calibrate", help="fit a site's operating point on its labelled images",
                       description="Refit the binary model's temperature and threshold on a "
                       "small labelled sample of a site's own images (a folder of NORMAL/ and "
                       "PNEUMONIA/ folders, or a folder with a labels CSV: file, label, optional "
                       "patient), report the CIs and the sample size a target precision needs, "
                       "and write site_calibration.json beside the binary model, which predict "
                       "then uses.")
    p.add_argument("sample", help="folder of the labelled sample")
    p.add_argument("--labels", default=None, help="labels CSV (default SAMPLE/labels.csv when "
                   "present, else NORMAL/ and PNEUMONIA/ folders)")
    p.add_argument("--models", default="results", metavar="DIR")
    p.add_argument("--arch", default=None)
    p.add_argument("--prepared", default=None, metavar="DIR")
    p.add_argument("--from-calibration", default=None, metavar="FILE",
                   help="the starting operating point (default: the pipeline's calibration.json)")
    p.add_argument("--rule", choices=("youden", "sensitivity"), default="youden")
    p.add_argument("--target-sensitivity", type=float, default=0.95)
    p.add_argument("--halfwidth", type=float, default=0.05,
                   help="the 95%% CI half-width the sample-size estimate aims at")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-side", type=int, default=64)
    p.add_argument("--max-pixels", type=int, default=100_000_000)
    p.add_argument("--out", default=None, help="default: site_calibration.json beside the "
                   "binary model")
    p.set_defaults(func=_cmd_calibrate)

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
