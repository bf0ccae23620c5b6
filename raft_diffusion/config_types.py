"""Building typed config dataclasses from plain data: type coercion with one-line errors that name
the field, unknown keys with a close-match hint, and dotted-key overrides."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Union

from raft_diffusion.errors import ConfigError


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _coerce(value: Any, tp: Any, where: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} must not be null; give a {getattr(inner, '__name__', inner)}")
    tp = inner
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{where} must be a finite number, got {value!r}; give a real value")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if tp is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"{where} must be a list, got {value!r}")
    if tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
        raise ConfigError(f"unknown config key '{prefix}{key}'; {hint}known keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def check_types(obj: Any, prefix: str = "") -> None:
    """Coerce every field of a built config dataclass in place (as :func:`_build` does for plain data), so a
    config made or changed in Python gets the same one-line errors (wrong type, NaN/inf, a section replaced)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp, value, where = hints[f.name], getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"{where} must be a {tp.__name__} section, got {type(value).__name__}; set its fields instead")
            check_types(value, f"{where}.")
        else:
            object.__setattr__(obj, f.name, _coerce(value, tp, where))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key = "a.b"``; unknown sections raise."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            known = [k for k, v in node.items() if isinstance(v, dict)]
            raise ConfigError(f"unknown config section {'.'.join(parts[:i + 1])!r} in {key!r}; sections: {', '.join(known)}")
        node = node[part]
    node[parts[-1]] = value
