"""Validation helpers: a mapping -> dataclass with typed, bounded fields, and one-line errors.

Every user mistake becomes a ``ConfigError`` naming the key path, the bad value and what is
allowed, e.g. ``train.lr: expected a number > 0, got -1``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .errors import ConfigError, did_you_mean


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, "null" if tp is type(None) else getattr(tp, "__name__", str(tp))
    )


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against a field's annotation; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
    elif tp is Any:
        return value
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (arg,) = typing.get_args(tp)[:1] or (Any,)
            return [coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        return dict(value)
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: Any, section: str, *, extra_ok: bool = False) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys with a did-you-mean.

    With ``extra_ok`` the unknown keys are returned to the caller instead: ``(obj, extras)``.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs, extras = {}, {}
    for key, value in data.items():
        if key in names:
            kwargs[key] = coerce(value, hints[key], f"{section}.{key}")
        elif extra_ok:
            extras[key] = value
        else:
            raise ConfigError(
                f"{section}: unknown key '{key}'{did_you_mean(key, names)}; "
                f"allowed: {', '.join(names)}"
            )
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return (obj, extras) if extra_ok else obj


def check_range(
    section: str, key: str, value: float | None, lo=None, hi=None, *, lo_open=False, hi_open=False
) -> None:
    """Raise a ConfigError unless ``lo <= value <= hi`` (bounds open where asked)."""
    if value is None:
        return
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi))
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ConfigError(f"{section}.{key}: must be in {left}{lo_s}, {hi_s}{right}, got {value}")


def check_choice(section: str, key: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(
            f"{section}.{key}: unknown value '{value}'{did_you_mean(value, choices)}; "
            f"choose from: {', '.join(choices)}"
        )
