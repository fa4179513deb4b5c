"""The one configuration: ``params.yaml`` plus optional overlays, validated against one schema.

The schema (``params.schema.yaml``, shipped inside the package) holds every key's default,
type and range; nothing else declares them. Snakemake loads ``params.yaml`` as its configfile
and merges ``--configfile`` overlays on top; DVC reads ``params.yaml`` directly (``dvc exp run
-S key=value`` edits it). Both routes end in :func:`validate`, so a typo or a bad value fails
the same way at start-up, naming the key and what is allowed. The library reads the validated
values as typed settings (:mod:`pneumocxr.settings`).
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

from .errors import InputError

#: Keys that were renamed or moved: old dotted key -> what to write instead.
RENAMED = {
    "train.3class": "train.three_class (DVC cannot address a key that starts with a digit)",
    "train.threshold": "calibrate (the operating point is fitted after training): "
                       "calibrate.rule and calibrate.target_sensitivity",
    "train.progress": "progress (top level; display only, no stage depends on it)",
    "embed.progress": "progress (top level; display only, no stage depends on it)",
    "anomaly.train.progress": "progress (top level; display only, no stage depends on it)",
    "anomaly.evaluate.progress": "progress (top level; display only, no stage depends on it)",
    "explain.progress": "progress (top level; display only, no stage depends on it)",
}

#: Display-only keys: no stage depends on them, so changing one reruns nothing.
DISPLAY_KEYS = ("progress",)

#: Task override blocks of ``train``: they accept the recipe keys (everything but these).
TASK_OVERRIDES = ("binary", "three_class")
#: Architecture override block of ``train``: ``per_arch.<arch>`` holds recipe keys too.
ARCH_OVERRIDES = "per_arch"
NOT_RECIPE = ("archs", "weights", "joint_head", *TASK_OVERRIDES, ARCH_OVERRIDES)


class ParamsError(InputError):
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


def _strip_defaults(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_defaults(v) for k, v in schema.items() if k not in ("default", "required")}
    if isinstance(schema, list):
        return [_strip_defaults(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    text = resources.files("pneumocxr").joinpath("params.schema.yaml").read_text()
    schema = yaml.safe_load(text)
    train = schema["properties"]["train"]["properties"]
    recipe = {k: v for k, v in train.items() if k not in NOT_RECIPE}
    block = {"additionalProperties": False, "default": {}, "properties": _strip_defaults(recipe)}
    for task in TASK_OVERRIDES:
        train[task].pop("x-task-overrides")
        train[task].update(copy.deepcopy(block))
    archs = train["archs"]["items"]["enum"]
    train[ARCH_OVERRIDES].pop("x-arch-overrides")
    train[ARCH_OVERRIDES].update({
        "additionalProperties": False, "default": {a: {} for a in archs},
        "properties": {a: {"type": "object", **copy.deepcopy(block)} for a in archs}})
    return schema


def schema() -> dict[str, Any]:
    """The parameter schema (a copy), task overrides filled in."""
    return copy.deepcopy(_schema())


def subschema(path: str) -> dict[str, Any]:
    """The schema of a dotted section, e.g. ``train`` or ``anomaly.score``."""
    node = _schema()
    for part in path.split(".") if path else []:
        try:
            node = node["properties"][part]
        except KeyError:
            raise ParamsError(f"{path}: no such params section") from None
    return copy.deepcopy(node)


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


_Validator = _with_defaults(jsonschema.Draft7Validator)


def _message(err: jsonschema.ValidationError, prefix: str) -> str:
    where = ".".join([prefix] * bool(prefix) + [str(p) for p in err.absolute_path])
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        keys = ", ".join(f"{where}.{k}" if where else k for k in extra)
        return f"{keys}: unknown key; allowed keys here: {', '.join(allowed)}"
    if err.validator == "enum":
        return f"{where}: {err.instance!r} is not allowed; allowed values: {err.validator_value}"
    if err.validator == "required":
        return f"{where or '(top level)'}: {err.message}"
    return f"{where or '(top level)'}: {err.message}"


def _check_renamed(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for old, new in RENAMED.items():
        if prefix and not old.startswith(prefix + "."):
            continue
        node: Any = params
        for part in old.removeprefix(prefix + "." if prefix else "").split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            found.append(f"{old}: renamed; use {new}")
    return found


def _validate_against(instance: Any, node_schema: dict[str, Any], prefix: str) -> None:
    errors = sorted(_Validator(node_schema).iter_errors(instance),
                    key=lambda e: [str(p) for p in e.absolute_path])
    renamed = _check_renamed(instance, prefix) if isinstance(instance, Mapping) else []
    if renamed or errors:
        lines = renamed + [_message(e, prefix) for e in errors]
        # a renamed key is also an unknown one: say it once, as the rename
        lines = [ln for ln in lines if not any(ln.startswith(r.split(":")[0] + ":") and
                                               "unknown key" in ln for r in renamed)]
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(dict.fromkeys(lines)))


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` in place (filling defaults) and return it.

    Raises :class:`ParamsError` naming each offending key, e.g. ``prepare.crop: 3 is less
    than the minimum of 16`` or ``train.epocs: unknown key; allowed keys here: ...``.
    """
    _validate_against(params, _schema(), "")
    _check_cross_field(params)
    return params


def complete(path: str, partial: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A section of params (dotted ``path``) with the schema's defaults filled in, validated.

    For library callers that set a few keys, e.g. ``complete("train", {"epochs": 2})``.
    """
    value = copy.deepcopy(dict(partial or {}))
    _validate_against(value, subschema(path), path)
    wrapped: dict[str, Any] = value
    for part in reversed(path.split(".")):
        wrapped = {part: wrapped}
    _check_cross_field(wrapped)
    return value


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ParamsError(f"invalid parameters:\n  {msg}")


def _check_cross_field(params: Mapping[str, Any]) -> None:
    """Checks that involve two keys (the schema checks one key at a time)."""
    prep = params.get("prepare") or {}
    if "crop" in prep and "resize" in prep:
        _need(prep["crop"] <= prep["resize"],
              f"prepare.crop ({prep['crop']}) must not exceed prepare.resize ({prep['resize']}): "
              "the center crop is taken from the resized image")
    train = params.get("train") or {}
    blocks = [("train", train)] + [(f"train.{t}", train.get(t) or {}) for t in TASK_OVERRIDES]
    blocks += [(f"train.{ARCH_OVERRIDES}.{a}", b or {})
               for a, b in (train.get(ARCH_OVERRIDES) or {}).items()]
    for where, block in blocks:
        aug = block.get("augment") or {}
        for key in ("scale", "ratio"):
            if key in aug:
                lo, hi = aug[key]
                _need(lo <= hi, f"{where}.augment.{key}: [min, max] with min <= max, got {aug[key]}")
    source = (params.get("data") or {}).get("source")
    if train.get("joint_head") and source is not None:
        _need("three_class" in tasks_for_source(source),
              f"train.joint_head: true needs bacteria/virus labels, and data.source={source} "
              "has none; set train.joint_head: false")
    ev = params.get("evaluate") or {}
    if "splits" in ev:
        _need({"val", "test"} <= set(ev["splits"]),
              f"evaluate.splits must include val and test, got {ev['splits']}")
    model = (params.get("anomaly") or {}).get("model") or {}
    score = (params.get("anomaly") or {}).get("score") or {}
    if "window" in score:
        _need(score["window"] % 2 == 1,
              f"anomaly.score.window must be odd (a window centred on its pixel), got "
              f"{score['window']}")
        if "input_size" in model:
            _need(score["window"] // 2 < model["input_size"],
                  f"anomaly.score.window ({score['window']}) is too large for "
                  f"anomaly.model.input_size ({model['input_size']})")
    if "channels" in model and "input_size" in model:
        depth = len(model["channels"])
        _need(model["input_size"] % 2 ** depth == 0,
              f"anomaly.model.input_size ({model['input_size']}) must be divisible by "
              f"2**len(anomaly.model.channels) = {2 ** depth}; pick a multiple of {2 ** depth} "
              "or fewer encoder blocks")
        for lv in [score.get("level", -1), *(score.get("levels") or [])]:
            _need(-depth <= lv < depth,
                  f"anomaly.score: encoder block {lv} does not exist; anomaly.model.channels "
                  f"has {depth} blocks (use 0..{depth - 1}, or -1 for the deepest)")


def load_params(path: str | Path = "params.yaml", overlays: Iterable[str | Path] = ()
                ) -> dict[str, Any]:
    """Read ``params.yaml``, merge each overlay in order, validate and return the result."""
    params = read_yaml(path)
    for overlay in overlays:
        params = deep_merge(params, read_yaml(overlay))
    try:
        return validate(params)
    except ParamsError as err:
        names = ", ".join(str(p) for p in [path, *overlays])
        raise ParamsError(f"{names}: {err}") from None


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


def select(params: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The nested subset of ``params`` holding exactly the dotted ``keys``.

    ``select(p, ["seed", "train.epochs"])`` -> ``{"seed": 42, "train": {"epochs": 10}}``.
    """
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = params
        parts = key.split(".")
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                raise ParamsError(f"params have no key {key}")
            node = node[part]
        dest = out
        for part in parts[:-1]:
            dest = dest.setdefault(part, {})
        dest[parts[-1]] = copy.deepcopy(node)
    return out


def tasks_for_source(source: str) -> list[str]:
    """The classifier tasks a data source supports: medmnist has no bacteria/virus subtypes."""
    return ["binary"] if source == "medmnist" else ["binary", "three_class"]


def dag_structure(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The params that decide which stages exist (not what a stage computes): the
    architectures, the tasks and whether the binary model is the folded joint network.
    Snakemake builds its DAG from them at start-up; dvc.yaml is generated for one value of
    each, and its stages refuse params that ask for others."""
    return {"archs": list(params["train"]["archs"]),
            "tasks": tasks_for_source(params["data"]["source"]),
            "joint_head": [str(bool(params["train"].get("joint_head", False))).lower()]}


def without_display(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` without the display-only keys (what a run's results depend on)."""
    return {k: copy.deepcopy(v) for k, v in params.items() if k not in DISPLAY_KEYS}
