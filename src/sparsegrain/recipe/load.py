"""YAML recipes <-> typed config, ``--set key.sub=value`` overrides, and the resolved copy."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import ConfigError, did_you_mean
from ..core.validate import from_dict
from ..data.catalog import DataConfig
from .config import ModelConfig, SparsityConfig, TrainConfig

SECTIONS = ("name", "description", "model", "data", "train", "sparsity")


@dataclass
class Recipe:
    """A whole experiment: ``model``, ``data``, ``train`` and ``sparsity`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = None  # sparsegrain.data.DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    name: str = ""
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        out["model"] = self.model.to_dict()
        out["data"] = dataclasses.asdict(self.data)
        out["train"] = dataclasses.asdict(self.train)
        out["sparsity"] = self.sparsity.to_dict()
        return out

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file; every failure is a one-line ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"recipe file not found: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read recipe {path}: {type(e).__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"recipe {path}: invalid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"recipe {path}: expected a mapping of sections, got {type(data).__name__}"
        )
    return data


def parse_set(item: str) -> tuple[list[str], Any]:
    """Parse one ``--set key.sub=value``; the value is read as YAML (``0.5``, ``true``, ``[a]``)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value, e.g. train.epochs=5")
    key, _, raw = item.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"--set {item!r}: expected key.sub=value, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_sets(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Return a copy of the raw recipe mapping with ``--set`` overrides applied."""
    data = copy.deepcopy(data)
    for item in sets or []:
        parts, value = parse_set(item)
        if parts[0] not in SECTIONS:
            raise ConfigError(
                f"--set {item!r}: unknown section '{parts[0]}'{did_you_mean(parts[0], SECTIONS)}; "
                f"choose from: {', '.join(SECTIONS)}"
            )
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: '{p}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def parse_recipe(data: dict[str, Any]) -> Recipe:
    """Validate a raw recipe mapping into a typed ``Recipe``."""

    if not isinstance(data, dict):
        raise ConfigError(f"recipe: expected a mapping of sections, got {type(data).__name__}")
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(
                f"recipe: unknown section '{key}'{did_you_mean(key, SECTIONS)}; "
                f"allowed: {', '.join(SECTIONS)}"
            )
    for key in ("name", "description"):
        if not isinstance(data.get(key, ""), str):
            raise ConfigError(f"recipe.{key}: expected a string, got {data[key]!r}")
    return Recipe(
        model=ModelConfig.parse(data.get("model")),
        data=from_dict(DataConfig, data.get("data"), "data"),
        train=from_dict(TrainConfig, data.get("train"), "train"),
        sparsity=SparsityConfig.parse(data.get("sparsity")),
        name=data.get("name", ""),
        description=data.get("description", ""),
    )


def load_recipe(source: str | Path | dict | Recipe, sets: list[str] | None = None) -> Recipe:
    """A recipe from a path, a mapping or a ``Recipe``, with optional ``--set`` overrides."""
    if isinstance(source, Recipe):
        if not sets:
            return source
        source = source.to_dict()
    data = source if isinstance(source, dict) else read_yaml(source)
    return parse_recipe(apply_sets(data, sets or []))
