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
from ..structures import parse_structure
from .rundir import LOCK, RUN_FILES, STAGING, SUMMARY, is_run_dir

NUMBER = "number"
TYPES = {str: "a string", list: "a list", dict: "an object", NUMBER: "a finite number"}


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
        return isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    return isinstance(value, kind)


def _finite(value: int | float) -> bool:
    """A number a float holds and that is not nan or inf (JSON may say ``NaN``, ``1e999`` or
    an integer of 400 digits)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


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
# Keys a reader uses when they are there (a dense run has no ``scope``): checked whenever present.
OPTIONAL_KEYS = {"scope": str, "score": str}


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
    for key, kind in OPTIONAL_KEYS.items():
        if key in record:
            require(record, key, kind, path)
    if layer_keys:
        layers = require(record, "layers", list, path)
        for i, row in enumerate(layers):
            if not isinstance(row, dict):
                raise ConfigError(f"{path}: 'layers[{i}]' must be an object")
            for key in layer_keys:
                require(row, key, LAYER_KEYS[key], path, f"layers[{i}].")
    return record


def layer_structures(run: str | Path, flag: str = "--run") -> dict[str, str | None]:
    """Layer name -> structure spec (``None``: left dense), from the run's ``summary.json``."""
    path = Path(run) / SUMMARY
    rows = read_summary(run, layer_keys=("name", "structure"), flag=flag)["layers"]
    out: dict[str, str | None] = {}
    for i, r in enumerate(rows):
        spec = r["structure"]
        if spec != "dense":
            _check_structure(path, i, spec, r.get("shape"))
        out[r["name"]] = None if spec == "dense" else spec
    return out


def _check_structure(path: Path, i: int, spec: str, shape: Any) -> None:
    """``layers[i].structure`` names a structure, and one that fits the row's ``shape``."""
    where = f"{path}: 'layers[{i}].structure'"
    try:
        st = parse_structure(spec)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if shape is None:
        return
    if not (
        isinstance(shape, list)
        and 1 <= len(shape) <= 4
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise ConfigError(f"{path}: 'layers[{i}].shape' must be a list of 1 to 4 integers >= 1")
    reason = st.fits(shape)
    if reason is not None:
        raise ConfigError(f"{where}: {spec} does not fit the layer's shape {shape} ({reason})")


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
    _not_run_internals(p, flag)
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
    _not_run_internals(p, flag)
    if runs_inside and p.is_dir() and is_run_dir(p):
        raise ConfigError(
            f"{flag} {p}: is a run directory; the runs go in directories under {flag}: "
            "choose another directory"
        )
    return p


def _not_run_internals(p: Path, flag: str) -> None:
    """Refuse a path that is a run directory's lock file or lies in its not yet started new run
    (``.sparsegrain-new/``): the next writer of the run removes both, and what was written
    there with them. ``--force`` does not change that."""
    real = Path(os.path.realpath(p))
    for part in (real, *real.parents):
        if part.name in (LOCK, STAGING):
            raise ConfigError(
                f"{flag} {p}: {part} belongs to the run in {part.parent} (its next writer "
                "removes it); choose another path"
            )
