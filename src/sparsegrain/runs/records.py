"""Reading a run's JSON records back, and guarding the files a command must not write over.

``read_summary`` is the one reader of ``summary.json``: a missing, truncated or non-object file,
a missing key or a value of the wrong type is a one-line ConfigError naming the file and the key,
and each command asks for the keys it uses. ``check_output`` is the preflight of an output
path: writable (``core.io.check_writable``), not a file the command reads, and not a run's own
file (``recipe.yaml``, ``summary.json``, the weights, masks and checkpoint, ``metrics.jsonl``,
another run's ``analysis.json``) unless the caller owns it or the user gave ``--force``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.io import check_writable
from .rundir import LOCK, RUN_FILES, SUMMARY, is_run_dir

NUMBER = "number"
TYPES = {str: "a string", list: "a list", dict: "an object", NUMBER: "a number"}


def read_json(path: str | Path, what: str = "file") -> Any:
    """The JSON value in ``path``; a missing, unreadable or truncated file is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: truncated or not JSON ({e.msg}: line {e.lineno}, column {e.colno})"
        ) from None


def require(record: Any, key: str, kind: Any, path: Path, where: str = "") -> Any:
    """``record[key]`` (dotted keys go down nested objects), checked to be a ``kind``
    (``str``, ``list``, ``dict`` or ``NUMBER``); else a ConfigError naming ``path`` and the key."""
    value = record
    done: list[str] = []
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            name = where + ".".join([*done, part])
            raise ConfigError(f"{path}: no key '{name}'")
        value = value[part]
        done.append(part)
    if not _is(value, kind):
        raise ConfigError(
            f"{path}: '{where}{key}' must be {TYPES[kind]}, got {type(value).__name__}"
        )
    return value


def _is(value: Any, kind: Any) -> bool:
    if kind == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


# What each reader of summary.json uses: top-level keys and keys of every ``layers`` row.
SUMMARY_KEYS = {
    "method": str,
    "structure": str,
    "target": NUMBER,
    "sparsity": NUMBER,
    "top1": NUMBER,
    "wall_time": NUMBER,
    "layers": list,
}
LAYER_KEYS = {"name": str, "structure": str, "target": NUMBER, "achieved": NUMBER}


def read_summary(
    run: str | Path,
    keys: Iterable[str] = ("layers",),
    layer_keys: Iterable[str] = (),
    flag: str = "--run",
) -> dict[str, Any]:
    """A run's ``summary.json``, checked to hold ``keys`` (of ``SUMMARY_KEYS``) and, in every
    ``layers`` row, ``layer_keys`` (of ``LAYER_KEYS``)."""
    path = Path(run) / SUMMARY
    if not path.is_file():
        raise ConfigError(f"{flag} {run}: no summary.json; the run did not finish")
    record = read_json(path, "summary")
    if not isinstance(record, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(record).__name__}")
    for key in keys:
        require(record, key, SUMMARY_KEYS[key], path)
    if layer_keys:
        layers = require(record, "layers", list, path)
        for i, row in enumerate(layers):
            if not isinstance(row, dict):
                raise ConfigError(f"{path}: 'layers[{i}]' must be an object")
            for key in layer_keys:
                require(row, key, LAYER_KEYS[key], path, f"layers[{i}].")
    for key in ("target", "sparsity", "top1", "wall_time"):
        if key in keys and not math.isfinite(record[key]):
            raise ConfigError(f"{path}: '{key}' must be a finite number, got {record[key]}")
    return record


def layer_structures(run: str | Path, flag: str = "--run") -> dict[str, str | None]:
    """Layer name -> structure spec (``None``: left dense), from the run's ``summary.json``."""
    rows = read_summary(run, layer_keys=("name", "structure"), flag=flag)["layers"]
    return {r["name"]: (None if r["structure"] == "dense" else r["structure"]) for r in rows}


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(
    path: str | Path,
    *,
    flag: str = "--out",
    kind: str = "file",
    reads: Iterable[str | Path] = (),
    owns: Iterable[str | Path] = (),
    force: bool = False,
) -> Path:
    """Refuse, before any work, an output ``path`` that cannot be written, or (``kind="file"``,
    without ``force``) one that is a file this command ``reads`` or a run's own file (there or
    not yet) other than those it ``owns``. Returns ``path``."""
    p = Path(path)
    check_writable(p, kind=kind, flag=flag)
    if kind != "file" or force:
        return p
    for r in reads:
        if p.exists() and Path(r).exists() and _same(p, Path(r)):
            raise ConfigError(
                f"{flag} {p}: is {Path(r).name}, which this command reads; choose another path, "
                "or give --force to replace it"
            )
    # a run's own file, there or not yet: another run's analysis.json is that run's record
    real = Path(os.path.realpath(p))
    owned = any(os.path.realpath(o) == str(real) for o in owns)
    if (real.name in RUN_FILES or real.name == LOCK) and is_run_dir(real.parent) and not owned:
        raise ConfigError(
            f"{flag} {p}: is the {real.name} of the run in {real.parent}; choose another "
            "path, or give --force to replace it"
        )
    return p


def check_output_dir(path: str | Path, *, flag: str = "--out", runs_inside: bool = False) -> Path:
    """An output directory: writable, and not a run directory itself (``runs_inside``: the
    command writes run directories under it)."""
    p = check_writable(path, kind="dir", flag=flag)
    if runs_inside and p.is_dir() and is_run_dir(p):
        raise ConfigError(
            f"{flag} {p}: is a run directory; the runs go in directories under {flag}: "
            "choose another directory"
        )
    return p
