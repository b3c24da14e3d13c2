"""Validation: a mapping -> dataclass whose field annotations are the schema, and one-line errors.

A field's annotation says both its type and its bounds::

    epochs: Annotated[int, Range(1, limit=EPOCH_LIMIT)] = 10
    momentum: Annotated[float, Range(0, 1, hi_open=True)] = 0.9
    milestones: Annotated[list[float], Range(0)] = ...  # the bounds of each item

``from_dict`` reads the annotations (``schema``), so a new key is typed and bounded where it is
declared, and a section's ``validate()`` keeps only the rules that relate keys to each other.

Whatever a key declares, some bounds always hold: a float is finite (NaN never passes; +-inf only
where ``Range(inf=True)``), an int is at most ``Range.limit`` (``INT_LIMIT`` when the key gives
none), so no value overflows inside torch or numpy; a bool is never an int and a string never a
number; a string is at most ``TEXT_LIMIT`` printable characters, and a list or mapping at most
``ITEMS_LIMIT`` entries. Every mistake becomes a ``ConfigError`` naming the key path, the bad
value and what is allowed, e.g. ``train.lr: must be in (0, inf], got -1``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import reprlib
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from .errors import ConfigError, did_you_mean

INT_LIMIT = 2**31 - 1  # the largest magnitude of an int key that declares no limit of its own
TEXT_LIMIT = 4096  # characters in a string value (PATH_MAX on Linux)
ITEMS_LIMIT = 1024  # entries in a list or mapping value
DEPTH_LIMIT = 16  # nesting of mappings and lists in a recipe
NODES_LIMIT = 100_000  # values (leaves and containers) in a recipe
EPOCH_LIMIT = 100_000  # the most epochs a key that counts epochs takes

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3


def show(value: Any) -> str:
    """A short one-line ``repr`` for error messages (long and deep values are cut with ``...``)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a user object whose repr fails
        text = f"<{type(value).__name__}>"
    return text.replace("\r", "\\r").replace("\n", "\\n")


def key_name(key: Any) -> str:
    """A mapping key as it appears in a key path: as is when a printable string, else ``show``."""
    return key if isinstance(key, str) and key.isprintable() else show(key)


def _num(x: float) -> str:
    return "inf" if x == math.inf else "-inf" if x == -math.inf else str(x)


@dataclass(frozen=True)
class Range:
    """The bounds of a number key (of each item, for a list of numbers).

    ``lo``/``hi``: the interval, ends included unless ``lo_open``/``hi_open``; ``limit``: the
    largest magnitude an int key with no ``hi`` accepts (default ``INT_LIMIT``), a sanity cap
    rather than a rule of the method; ``inf``: a float key may be +-inf.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    limit: int | None = None
    inf: bool = False

    @property
    def top(self) -> float:
        """The largest value accepted by an int key: ``hi``, else ``limit``, else ``INT_LIMIT``."""
        if self.hi is not None:
            return self.hi
        return INT_LIMIT if self.limit is None else self.limit

    def interval(self) -> str:
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        lo = "-inf" if self.lo is None else _num(self.lo)
        hi = "inf" if self.hi is None else _num(self.hi)
        return f"{left}{lo}, {hi}{right}"

    def contains(self, value: float) -> bool:
        """Whether ``value`` is inside the interval (the limit aside)."""
        lo, hi = self.lo, self.hi
        below = lo is not None and (value < lo or (self.lo_open and value == lo))
        above = hi is not None and (value > hi or (self.hi_open and value == hi))
        return not (below or above)

    def allows(self, value: float) -> bool:
        """Whether a finite in-type ``value`` passes: interval and, for an int, the limit."""
        if isinstance(value, int) and self.hi is None and abs(value) > self.top:
            return False
        return self.contains(value)

    def refuse(self, where: str, value: float) -> ConfigError:
        """The error for a finite ``value`` that ``allows`` refuses."""
        if self.contains(value):  # inside the interval, beyond the limit
            sign, bound = ("<=", self.top) if value > 0 else (">=", -self.top)
            return ConfigError(f"{where}: expected an integer {sign} {bound}, got {show(value)}")
        return ConfigError(f"{where}: must be in {self.interval()}, got {show(value)}")


ANY_INT = Range()  # what an int key with no declared bounds gets: |value| <= INT_LIMIT


@functools.cache
def schema(cls: type) -> dict[str, tuple[Any, Range | None]]:
    """``{field: (type, Range or None)}`` of dataclass ``cls``, read from its annotations."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: dict[str, tuple[Any, Range | None]] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, rng = hints[f.name], None
        if typing.get_origin(tp) is Annotated:
            tp, *meta = typing.get_args(tp)
            rng = next((m for m in meta if isinstance(m, Range)), None)
        out[f.name] = (tp, rng)
    return out


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
    """Check ``value``'s type against annotation ``tp``; ints are accepted where floats are.

    Only the type: ``check_value`` adds the bounds.
    """
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
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond the float range
                raise ConfigError(f"{where}: expected a finite number, got {show(value)}") from None
    elif tp is str:
        if isinstance(value, str):
            return str(value)
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            _check_size(value, where)
            (arg,) = typing.get_args(tp)[:1] or (Any,)
            return [coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        return dict(value)
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {show(value)}")


def _check_size(value: Any, where: str) -> None:
    if len(value) > ITEMS_LIMIT:
        raise ConfigError(f"{where}: expected at most {ITEMS_LIMIT} entries, got {len(value)}")


def check_text(value: str, where: str) -> None:
    """A string value: at most ``TEXT_LIMIT`` printable characters (one line, no control)."""
    if len(value) > TEXT_LIMIT or not value.isprintable():
        raise ConfigError(
            f"{where}: expected a string of at most {TEXT_LIMIT} printable characters (no "
            f"newline, tab or control character), got {show(value)}"
        )


def check_bounds(value: Any, where: str, rng: Range | None = None) -> None:
    """The bounds every value of its type has (finite, limits, lengths), then ``rng``'s."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, (list, tuple)):
        _check_size(value, where)
        for i, v in enumerate(value):
            check_bounds(v, f"{where}[{i}]", rng)
    elif isinstance(value, dict):
        _check_size(value, where)
        for key in value:
            if not isinstance(key, str):
                raise ConfigError(f"{where}: keys must be strings, got {show(key)}")
            check_text(key, f"{where} key")
    elif isinstance(value, float):
        if math.isnan(value) or (math.isinf(value) and not (rng and rng.inf)):
            raise ConfigError(f"{where}: expected a finite number, got {show(value)}")
        if rng is not None and not rng.allows(value):
            raise rng.refuse(where, value)
    elif isinstance(value, int):
        rng = rng or ANY_INT
        if not rng.allows(value):
            raise rng.refuse(where, value)


def check_value(value: Any, tp: Any, where: str, rng: Range | None = None) -> Any:
    """``value`` of annotation ``tp``, typed and within its bounds; else a ConfigError."""
    value = coerce(value, tp, where)
    check_bounds(value, where, rng)
    return value


def check_tree(data: Any, what: str = "recipe") -> None:
    """Refuse a structure nested deeper than ``DEPTH_LIMIT`` or with over ``NODES_LIMIT`` values
    (a cycle counts as infinitely deep), naming the key path where it goes too deep. Iterative,
    so it never hits the recursion limit; ``what`` names the whole in the size error."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    nodes = 0
    while stack:
        node, path, depth = stack.pop()
        nodes += 1
        if nodes > NODES_LIMIT:
            raise ConfigError(f"{what}: more than {NODES_LIMIT} values; a recipe is smaller")
        if isinstance(node, dict):
            items = [(f"{path}.{key_name(k)}" if path else key_name(k), v) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            items = [(f"{path}[{i}]", v) for i, v in enumerate(node)]
        else:
            continue
        if depth >= DEPTH_LIMIT:
            raise ConfigError(f"{path[:80] or what}: nested deeper than {DEPTH_LIMIT} levels")
        stack.extend((v, p, depth + 1) for p, v in items)


def from_dict(cls: type, data: Any, section: str, *, extra_ok: bool = False) -> Any:
    """Build dataclass ``cls`` from a mapping: every key typed and bounded by ``schema(cls)``,
    unknown keys refused with a did-you-mean, then ``cls.validate()`` (the cross-key rules).

    With ``extra_ok`` the unknown keys are returned to the caller instead: ``(obj, extras)``.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {show(data)}")
    fields = schema(cls)
    names = list(fields)
    kwargs, extras = {}, {}
    for key, value in data.items():
        if key in fields:
            tp, rng = fields[key]
            kwargs[key] = check_value(value, tp, f"{section}.{key}", rng)
        elif extra_ok and isinstance(key, str):
            extras[key] = value
        else:
            raise ConfigError(
                f"{section}: unknown key {show(key)}{did_you_mean(key, names)}; "
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
    """Raise a ConfigError unless ``lo <= value <= hi`` (bounds open where asked): for bounds
    that depend on another key (``min_lr <= lr``); fixed bounds belong in the annotation."""
    if value is None:
        return
    rng = Range(lo, hi, lo_open, hi_open)
    if not rng.contains(value):
        raise rng.refuse(f"{section}.{key}", value)


def check_choice(section: str, key: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(
            f"{section}.{key}: unknown value {show(value)}{did_you_mean(value, choices)}; "
            f"choose from: {', '.join(choices)}"
        )
