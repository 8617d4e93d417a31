"""The raw configuration tree and its typed form: merging YAML mappings, `--set dotted.key=value`
overrides, and building nested dataclasses from a mapping with checked keys and types, each
mistake one sentence naming the key. Generic: the schema itself is `coincide.config.settings`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from coincide.errors import UserError


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Apply one `dotted.key=value` override to the raw config tree, in place.

    The value is parsed as YAML. Keys are checked later against the dataclasses, except that a
    path through a value that is not a mapping or list is an error here.
    """
    key, sep, raw_value = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {override!r} is not of the form key.sub=value; fix the flag.")
    try:
        value = yaml.safe_load(raw_value)
    except yaml.YAMLError as err:
        raise UserError(f"--set {key}: cannot parse value {raw_value!r} as YAML ({err}).") from err
    parts = key.split(".")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        node = _child_for_write(node, part, ".".join(parts[: depth + 1]))
    _assign(node, parts[-1], value, key)


def _child_for_write(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        index = _list_index(node, part, where)
        if isinstance(node[index], str):  # a stage given by its recipe name grows into a mapping
            node[index] = {"name": node[index]}
        return node[index]
    if isinstance(node, dict):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict | list):
            raise UserError(f"config key '{where}' is a value, not a section; fix the --set key.")
        return child
    raise UserError(f"config key '{where}' cannot be followed by more keys; fix the --set key.")


def _assign(node: Any, part: str, value: Any, key: str) -> None:
    if isinstance(node, list):
        node[_list_index(node, part, key)] = value
    else:
        node[part] = value


def _list_index(node: list[Any], part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(
            f"config key '{where}' needs a list position below {len(node)}; fix the --set key."
        )
    return int(part)


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, recursively, checking keys and types.

    `where` is the dotted path of `data` in the config, used in error messages.
    """
    if not isinstance(data, Mapping):
        raise UserError(f"config key '{where}' must be a mapping; fix the config.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        raise UserError(unknown_message(join_key(where, str(unknown[0])), cls))
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        path = join_key(where, name)
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"config key '{path}' is missing; add it to the config.")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build_dataclass(typing.cast(type, hint), value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            return _coerce(arg, value, where)
    if origin is Literal:
        # By type too: 1 == True, and YAML 1 is not the `true` a key may ask for.
        if not any(value == arg and type(value) is type(arg) for arg in args):
            raise UserError(
                f"config key '{where}' is {value!r}; use one of {', '.join(map(str, args))}."
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key '{where}' must be a list; fix the config.")
        return [_coerce(args[0], item, f"{where}.{i}") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"config key '{where}' must be a mapping; fix the config.")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{where}' is {value!r}; use true or false.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{where}' is {value!r}; use a whole number.")
        return value
    if hint is float:
        return as_float(where, value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{where}' is {value!r}; use a string.")
        return value
    raise TypeError(f"config field {where} has an unsupported type {hint!r}")


def as_float(where: str, value: Any) -> float:
    # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it obviously is.
    if isinstance(value, bool):
        raise UserError(f"config key '{where}' is {value!r}; use a number.")
    number: float | None = None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None:
        raise UserError(f"config key '{where}' is {value!r}; use a number.")
    if not math.isfinite(number):
        # No setting means anything by nan or inf; they only fail later, deep in torch.
        raise UserError(f"config key '{where}' is {value!r}; use a finite number.")
    return number


def as_fraction(where: str, value: Any) -> float:
    number = as_float(where, value)
    if not 0.0 <= number <= 1.0:
        raise UserError(f"config key '{where}' is {number}; use a value in [0, 1].")
    return number


def unknown_message(key: str, cls: type) -> str:
    known = ", ".join(f.name for f in dataclasses.fields(cls))
    return f"config key '{key}' is unknown; known keys here: {known}."


def join_key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
