"""The library code a step runs: the import closure of a script within the package.

A pipeline step is a thin script (``workflow/scripts/X.py``) over library modules; its result
depends on every module it imports, directly or through other modules, at any depth and also
inside functions (imports under ``if TYPE_CHECKING:`` never run and are left out).
:func:`code_deps` lists them; Snakemake
rules take the list as their ``code`` input and DVC stages as deps, and the training stages
hash it into their resume key (:func:`code_fingerprint`), so a code change never resumes a
run that older code started. Standard library only.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from .errors import InputError

PACKAGE_DIR = Path("src/pneumocxr")


class CodeDepsError(InputError):
    """A script's import closure cannot be computed (missing package folder or module)."""


def _module_file(package_dir: Path, dotted: str) -> Path | None:
    """``pneumocxr.data.arrays`` -> ``src/pneumocxr/data/arrays.py`` (or the package's
    ``__init__.py``); None when no such module file exists (a name imported from a module)."""
    parts = dotted.split(".")[1:]
    base = package_dir.joinpath(*parts) if parts else package_dir
    if base.with_suffix(".py").is_file() and parts:
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(path: Path, package_dir: Path | None = None) -> set[str]:
    """Dotted ``pneumocxr...`` modules a file imports (absolute or relative, at any depth,
    including imports inside functions). ``package_dir`` places a library file for its
    relative imports (None: a script outside the package, absolute imports only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (list(path.relative_to(package_dir.parent).parts[:-1])
               if package_dir is not None else [])
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: never runs
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pneumocxr")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "pneumocxr":
                continue
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # submodules imported by name
    return found


def code_deps(script: str | Path, package_dir: str | Path = PACKAGE_DIR) -> list[str]:
    """The library modules ``script`` runs: its import closure within ``package_dir``.

    Importing ``pneumocxr.a.b`` runs ``pneumocxr/__init__.py`` and ``pneumocxr/a/__init__.py``
    too, so those are in it. Returned as sorted paths relative to the working directory.
    """
    package_dir = Path(package_dir)
    if not (package_dir / "__init__.py").is_file():
        raise CodeDepsError(f"{package_dir}: the pneumocxr package sources are not here; run the "
                            "workflow from the repository root (where src/pneumocxr lives)")
    script = Path(script)
    if not script.is_file():
        raise CodeDepsError(f"{script}: script not found")
    return _closure([script], package_dir, start_is_script=True)


def _closure(start: list[Path], package_dir: Path, *, start_is_script: bool) -> list[str]:
    todo = list(start)
    seen: set[Path] = set() if start_is_script else set(start)
    while todo:
        path = todo.pop()
        script = start_is_script and path in start
        for mod in _imports(path, None if script else package_dir):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):  # every package on the way runs its __init__
                f = _module_file(package_dir, ".".join(parts[:i]))
                if f is not None and f not in seen:
                    seen.add(f)
                    todo.append(f)
    # The params schema (package data) is not a dependency: it only validates and fills in
    # defaults, and the validated values a step reads are its params, which both engines
    # track (every key a DVC stage lists is written in params.yaml).
    return sorted(str(f) for f in seen)


def module_closure(module: str, package_dir: str | Path | None = None) -> list[Path]:
    """The closure of a library module itself, e.g. ``pneumocxr.train`` (for resume keys)."""
    package_dir = Path(package_dir or Path(__file__).parent)
    start = _module_file(package_dir, module)
    if start is None:
        raise CodeDepsError(f"{module}: no such module under {package_dir}")
    return [Path(p) for p in _closure([start], package_dir, start_is_script=False)]


def code_fingerprint(files: list[Path] | list[str]) -> str:
    """sha256 over the files' names and contents (sorted)."""
    h = hashlib.sha256()
    for f in sorted(Path(x) for x in files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
