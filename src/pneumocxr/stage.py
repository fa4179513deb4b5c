"""One entry-point contract for every pipeline script, whichever engine runs it.

Snakemake runs ``workflow/scripts/X.py`` through its ``script:`` directive and injects a
``snakemake`` object; DVC runs the same file as a command::

    python workflow/scripts/X.py --rule X --input name=path ... --output name=path ... \
        --log logs/X.log --threads 2 --params data prepare

and the script then reads those sections of ``params.yaml`` (validated, defaults filled).
:func:`stage_io` hides the difference, so a script is::

    io = stage_io(globals())
    with io.logging():
        run_something(io.input["raw"], io.output["dir"], **io.params["prepare"])
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .config import ParamsError, load_params
from .utils import set_threads


@dataclass
class StageIO:
    rule: str
    input: dict[str, str] = field(default_factory=dict)
    output: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    log: str | None = None
    threads: int = 1

    @contextlib.contextmanager
    def logging(self, level: int = logging.INFO) -> Iterator[logging.Logger]:
        """Log to the rule's log file (and stderr); set torch/OpenCV threads to ``threads``.

        A user-caused error (``ValueError``, ``FileNotFoundError``, ``RuntimeError``) is
        logged as one clear line and the process exits with status 1, no traceback.
        """
        root = logging.getLogger()
        root.setLevel(level)
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
        if self.log:
            Path(self.log).parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(self.log, mode="w"))
        for h in handlers:
            h.setFormatter(fmt)
            root.addHandler(h)
        set_threads(self.threads)
        logger = logging.getLogger(f"pneumocxr.{self.rule}")
        logger.info("rule %s: threads=%d inputs=%s outputs=%s", self.rule, self.threads,
                    self.input, self.output)
        try:
            yield logger
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            logger.error("%s", err)
            logger.debug("details", exc_info=True)
            raise SystemExit(1) from None
        finally:
            for h in handlers:
                root.removeHandler(h)
                h.close()


def _named(items) -> dict[str, Any]:
    """Snakemake's Namedlist -> {name: path or list of paths} (every rule names its files)."""
    return {k: ([str(x) for x in v] if isinstance(v, list) else str(v)) for k, v in items.items()}


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{flag} expects name=path, got {value!r}")
        out[name] = path
    return out


def stage_io(script_globals: dict[str, Any], argv: list[str] | None = None) -> StageIO:
    """Build the :class:`StageIO` of the running script (Snakemake object or command line)."""
    smk = script_globals.get("snakemake")
    if smk is not None:
        return StageIO(
            rule=smk.rule,
            input=_named(smk.input),
            output=_named(smk.output),
            params=dict(smk.params.items()),
            log=str(smk.log[0]) if len(smk.log) else None,
            threads=int(smk.threads),
        )
    parser = argparse.ArgumentParser(description="pneumocxr pipeline step (DVC route)")
    parser.add_argument("--rule", required=True)
    parser.add_argument("--input", nargs="*", default=[])
    parser.add_argument("--output", nargs="*", default=[])
    parser.add_argument("--log")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--params", nargs="*", default=[],
                        help="top-level sections of the params file this step reads")
    parser.add_argument("--params-file", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        cfg = load_params(args.params_file)
    except ParamsError as err:
        raise SystemExit(f"{args.rule}: {err}") from None
    missing = [name for name in args.params if name not in cfg]
    if missing:
        raise SystemExit(f"{args.rule}: {args.params_file} has no section {missing}")
    return StageIO(
        rule=args.rule,
        input=_pairs(args.input, "--input"),
        output=_pairs(args.output, "--output"),
        params={name: cfg[name] for name in args.params},
        log=args.log,
        # DVC does not schedule cores: the rule's declared threads, capped at this machine's.
        threads=max(1, min(args.threads, os.cpu_count() or 1)),
    )
