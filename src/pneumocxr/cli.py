"""Command line: ``pneumocxr <command>``.

Commands:
  params   show the merged, validated params (``--overlay config/X.yaml``), or print them as
           DVC ``-S key=value`` flags (``--dvc-set``) so an overlay runs through DVC too.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from .config import ParamsError, flatten, load_params, read_yaml


def _cmd_params(args: argparse.Namespace) -> int:
    if args.dvc_set:
        flags = []
        for overlay in args.overlay:
            for key, value in flatten(read_yaml(overlay)).items():
                flags += ["-S", f"{key}={json.dumps(value)}"]
        print(" ".join(shlex.quote(f) for f in flags))
        return 0
    params = load_params(args.params_file, args.overlay)
    print(json.dumps(params, indent=2))
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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ParamsError, FileNotFoundError, ValueError) as err:
        print(f"pneumocxr: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
