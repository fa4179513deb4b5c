"""The one configuration: ``params.yaml`` plus optional overlays, validated against a schema.

Snakemake loads ``params.yaml`` as its configfile and merges ``--configfile`` overlays on top;
DVC reads ``params.yaml`` directly (``dvc exp run -S key=value`` edits it). Both routes end in
:func:`validate`, so a bad value fails the same way, naming the key and the reason.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

SCHEMA_PATH = Path("workflow/schemas/params.schema.yaml")


class ParamsError(ValueError):
    """A parameter file is missing, unreadable or has an invalid value."""


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively by ``overlay`` (overlay wins; lists are replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of parameters at the top level")
    return data


def _with_defaults(validator_class):
    """A jsonschema validator class that also fills in ``default`` values (like Snakemake's)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate(params: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate ``params`` in place (filling defaults) and return it.

    Raises :class:`ParamsError` naming the offending key, e.g. ``prepare.crop: 0 is less than
    the minimum of 16``.
    """
    schema = read_yaml(schema_path)
    validator = _with_defaults(jsonschema.Draft7Validator)(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"{key}: {err.message}")
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(lines))
    _check_cross_field(params)
    return params


def _check_cross_field(params: dict[str, Any]) -> None:
    prep = params.get("prepare", {})
    if prep and prep.get("crop", 0) > prep.get("resize", 0):
        raise ParamsError(
            f"prepare.crop ({prep['crop']}) must not exceed prepare.resize ({prep['resize']}): "
            "the center crop is taken from the resized image"
        )


def load_params(
    path: str | Path = "params.yaml",
    overlays: Iterable[str | Path] = (),
    schema_path: str | Path = SCHEMA_PATH,
) -> dict[str, Any]:
    """Read ``params.yaml``, merge each overlay in order, validate and return the result."""
    params = read_yaml(path)
    for overlay in overlays:
        params = deep_merge(params, read_yaml(overlay))
    return validate(params, schema_path)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
