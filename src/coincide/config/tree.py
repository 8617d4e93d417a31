"""The raw configuration tree and its typed form: merging YAML mappings, `--set dotted.key=value`
overrides, and building nested dataclasses from a mapping with checked keys and types
(pydantic), each mistake one sentence naming the key. Generic: the schema itself is
`coincide.config.settings`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from coincide.errors import UserError


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does: `1e-4` (no dot) is the float it
    looks like, not the string YAML 1.1 makes of it."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """YAML text as Python values, numbers read as YAML 1.2 reads them (`YamlLoader`)."""
    return yaml.load(text, Loader=YamlLoader)  # a SafeLoader: no Python objects


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
        value = read_yaml(raw_value)
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


# Every config dataclass is validated by pydantic under these rules, set once for the whole tree
# (`_validator`) so that the dataclasses stay plain: unknown keys are errors, nan and inf are not
# numbers a setting can take, and types are strict (JSON's: 1 is not `true`, 2.5 is not a whole
# number, "3" is not a number).
_RULES = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, recursively, checking keys and types (with
    pydantic); the first mistake is a UserError naming its dotted key (`where` is the path of
    `data` in the config)."""
    if not isinstance(data, Mapping):
        raise UserError(f"config key '{where}' must be a mapping; fix the config.")
    # As JSON: pydantic builds dataclasses from mappings in strict mode only from JSON input.
    text = json.dumps(data, allow_nan=True, default=str)
    try:
        return _validator(cls).validate_json(text)
    except ValidationError as err:
        raise UserError(_sentence(cls, err.errors(), where)) from None


@functools.cache
def _validator(cls: type) -> TypeAdapter[Any]:
    for node in _dataclasses_below(cls):
        if "__pydantic_config__" not in vars(node):
            node.__pydantic_config__ = _RULES  # type: ignore[attr-defined]
    return TypeAdapter(cls)


def _dataclasses_below(hint: Any, seen: set[type] | None = None) -> set[type]:
    """`hint` and every dataclass its fields hold, through lists, dicts and unions."""
    seen = set() if seen is None else seen
    if dataclasses.is_dataclass(hint) and isinstance(hint, type) and hint not in seen:
        seen.add(hint)
        for field_hint in typing.get_type_hints(hint).values():
            _dataclasses_below(field_hint, seen)
    for arg in typing.get_args(hint):
        _dataclasses_below(arg, seen)
    return seen


def _sentence(cls: type, errors: list[Any], where: str) -> str:
    """The first pydantic error as the sentence a user reads: the key, its value, what to write
    (for a key of several types, such as `"auto"` or a bool, what each of them takes)."""
    first = errors[0]
    key, owner = _key_of(cls, tuple(first["loc"]), where)
    value, kind = first.get("input"), first["type"]
    if kind == "missing":
        return f"config key '{key}' is missing; add it to the config."
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return unknown_message(key, owner)
    if kind == "list_type":
        return f"config key '{key}' must be a list; fix the config."
    if kind in ("dataclass_type", "dict_type", "dataclass_exact_type"):
        return f"config key '{key}' must be a mapping; fix the config."
    same_key = [e for e in errors if _key_of(cls, tuple(e["loc"]), where)[0] == key]
    wanted = list(dict.fromkeys(filter(None, (_expected(e) for e in same_key))))
    if not wanted:
        return f"config key '{key}' is {value!r}: {first['msg']}; fix the config."
    return f"config key '{key}' is {value!r}; use {' or '.join(wanted)}."


def _expected(error: Mapping[str, Any]) -> str | None:
    """What a value of the type behind one pydantic error looks like, in words."""
    kind = error["type"]
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return "a whole number"
    if kind in ("bool_type", "bool_parsing"):
        return "true or false"
    if kind == "finite_number" or (kind == "float_type" and _non_finite_text(error.get("input"))):
        return "a finite number"
    if kind in ("float_type", "float_parsing"):
        return "a number"
    if kind == "literal_error":
        expected = str(error["ctx"]["expected"])
        return expected if " or " not in expected else f"one of {expected}"
    if kind == "string_type":
        return "a string"
    return None


def _key_of(cls: type, loc: tuple[Any, ...], where: str) -> tuple[str, type]:
    """The dotted config key of a pydantic error location, and the dataclass that holds it.
    Union members' tags (`bool`, `literal['auto']`) in the location are not keys."""
    parts = [where] if where else []
    node: Any = cls
    owner = cls
    for item in loc:
        while typing.get_origin(node) in (typing.Union, types.UnionType):
            node = next(a for a in typing.get_args(node) if a is not type(None))
        if dataclasses.is_dataclass(node) and isinstance(node, type):
            owner = node
            parts.append(str(item))
            fields = typing.get_type_hints(node)
            if item not in fields:
                break
            node = fields[item]
        elif typing.get_origin(node) in (list, dict) and isinstance(item, int | str):
            if typing.get_origin(node) is list and not isinstance(item, int):
                break
            parts.append(str(item))
            node = typing.get_args(node)[-1]
        else:
            break
    return ".".join(parts), owner


def _non_finite_text(value: Any) -> bool:
    """A string that reads as nan or inf (YAML reads `nan`, unlike `.nan`, as text)."""
    if not isinstance(value, str):
        return False
    with contextlib.suppress(ValueError):
        return not math.isfinite(float(value))
    return False


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
