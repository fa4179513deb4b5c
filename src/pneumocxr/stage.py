"""One entry-point contract for every pipeline script, whichever engine runs it.

Snakemake runs ``workflow/scripts/X.py`` through its ``script:`` directive and injects a
``snakemake`` object; DVC runs the same file as a command::

    python workflow/scripts/X.py --rule X --wildcards task=binary arch=resnet18 \
        --input name=path ... --output name=path ... --log logs/X.log --threads 2 \
        --params seed train.epochs train.lr ... --dag archs=resnet18 tasks=binary,three_class

and the script then reads exactly those keys of ``params.yaml`` (validated, defaults filled):
the dotted keys a rule lists are the keys its step reads, under both engines.
:func:`stage_io` hides the difference, so a script is::

    io = stage_io(globals())
    with io.logging():
        run_something(io.input["raw"], io.output["dir"], io.params["prepare"])

``io.progress`` (params ``progress``, or a terminal) is display only: no stage depends on it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from .config import ParamsError, dag_structure, load_params, select, without_display
from .errors import PneumocxrError
from .utils import set_threads


def summarize_paths(paths: Any) -> str:
    """``name=path`` for one path; ``N files under ROOT`` for a list (logs stay readable)."""
    if isinstance(paths, (list, tuple)):
        if len(paths) == 1:
            return str(paths[0])
        if not paths:
            return "no files"
        root = os.path.commonpath([str(p) for p in paths]) if paths else ""
        return f"{len(paths)} files under {root or '.'}"
    return str(paths)


@dataclass
class StageIO:
    rule: str
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    wildcards: dict[str, str] = field(default_factory=dict)
    log: str | None = None
    threads: int = 1
    #: display only (progress bars): params ``progress`` or a terminal on stderr
    progress: bool = False
    #: the library modules the script runs (an input of the engines, not of the script)
    code: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def logging(self, level: int = logging.INFO) -> Iterator[logging.Logger]:
        """Log to the rule's log file (and stderr); set torch/OpenCV threads to ``threads``.

        A :class:`~pneumocxr.errors.PneumocxrError` (a bad param, file or model: the user's
        to fix) is logged as one line and the process exits with status 1. Any other error
        (a shape mismatch, an out-of-memory, a bug) is logged with its full traceback, so the
        evidence stays in the rule's log, and re-raised.
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
        where = " ".join(f"{k}={v}" for k, v in self.wildcards.items())
        logger.info("rule %s%s: threads=%d", self.rule, f" ({where})" if where else "",
                    self.threads)
        for name, paths in self.input.items():
            logger.info("input %s: %s", name, summarize_paths(paths))
        if self.code:
            logger.info("code: %s", summarize_paths(self.code))
        for name, path in self.output.items():
            logger.info("output %s: %s", name, path)
        try:
            yield logger
        except PneumocxrError as err:
            logger.error("%s", err)
            raise SystemExit(1) from None
        except Exception:
            logger.exception("rule %s failed with an unexpected error", self.rule)
            raise
        finally:
            for h in handlers:
                root.removeHandler(h)
                h.close()


def _named(items) -> dict[str, Any]:
    """Snakemake's Namedlist -> {name: path or list of paths} (every rule names its files)."""
    return {k: ([str(x) for x in v] if isinstance(v, list) else str(v)) for k, v in items.items()}


def _pairs(values: list[str], flag: str) -> dict[str, Any]:
    """``name=path`` pairs; a name given several times collects a list."""
    out: dict[str, Any] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{flag} expects name=value, got {value!r}")
        if name in out:
            out[name] = [*(out[name] if isinstance(out[name], list) else [out[name]]), path]
        else:
            out[name] = path
    return out


def format_structure(structure: Mapping[str, list[str]]) -> list[str]:
    """``{"archs": ["resnet18"]}`` -> ``["archs=resnet18"]`` (the ``--dag`` words of a command)."""
    return [f"{k}={','.join(v)}" for k, v in structure.items()]


def check_structure(expected_words: list[str], params: Mapping[str, Any], params_file: str
                    ) -> None:
    """The DVC route: stop when ``params_file`` asks for other stages than dvc.yaml holds."""
    expected = {}
    for word in expected_words:
        key, _, value = word.partition("=")
        expected[key] = [v for v in value.split(",") if v]
    found = dag_structure(params)
    diff = [f"{key}: dvc.yaml has stages for {expected.get(key)}, {params_file} asks for "
            f"{found.get(key)}" for key in sorted(set(expected) | set(found))
            if expected.get(key) != found.get(key)]
    if diff:
        raise ParamsError(
            "these params change which stages exist, and dvc.yaml was generated for other "
            "values:\n  " + "\n  ".join(diff) + "\nRegenerate it from the edited params "
            "(`make dvc.yaml`, i.e. `python -m pneumocxr.workflow_sync`) and rerun, or run "
            "the workflow with Snakemake, which builds its DAG from the params")


def stage_io(script_globals: dict[str, Any], argv: list[str] | None = None) -> StageIO:
    """Build the :class:`StageIO` of the running script (Snakemake object or command line)."""
    smk = script_globals.get("snakemake")
    tty = sys.stderr.isatty()
    if smk is not None:
        inputs = _named(smk.input)
        code = inputs.pop("code", [])
        return StageIO(
            rule=smk.rule,
            input=inputs,
            code=[code] if isinstance(code, str) else code,
            output=_named(smk.output),
            params=dict(smk.params.items()),
            wildcards={k: str(v) for k, v in smk.wildcards.items()},
            log=str(smk.log[0]) if len(smk.log) else None,
            threads=int(smk.threads),
            progress=tty or bool(smk.config.get("progress", False)),
        )
    parser = argparse.ArgumentParser(description="pneumocxr pipeline step (DVC route)")
    parser.add_argument("--rule", required=True)
    parser.add_argument("--wildcards", nargs="*", default=[])
    parser.add_argument("--input", nargs="*", default=[])
    parser.add_argument("--output", nargs="*", default=[])
    parser.add_argument("--log")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--params", nargs="*", default=[],
                        help="dotted keys of the params file this step reads")
    parser.add_argument("--dag", nargs="*", default=[],
                        help="the stage-defining params dvc.yaml was generated for")
    parser.add_argument("--params-file", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        cfg = load_params(args.params_file)
        if args.dag:
            check_structure(args.dag, cfg, args.params_file)
        params = select(cfg, [k for k in args.params if k != "all"])
        if "all" in args.params:
            params["all"] = without_display(cfg)
    except ParamsError as err:
        raise SystemExit(f"{args.rule}: {err}") from None
    return StageIO(
        rule=args.rule,
        input=_pairs(args.input, "--input"),
        output=_pairs(args.output, "--output"),
        params=params,
        wildcards=_pairs(args.wildcards, "--wildcards"),
        log=args.log,
        # DVC does not schedule cores: the rule's declared threads, capped at this machine's.
        threads=max(1, min(args.threads, os.cpu_count() or 1)),
        progress=tty or bool(cfg.get("progress", False)),
    )
