"""YAML recipes <-> typed config, ``--set key.sub=value`` overrides, and the resolved copy.

Recipe files and ``--set`` values are read with ``RecipeLoader`` (``load_yaml``): safe loading
that also refuses duplicate keys, non-string keys, aliases, merge keys and deep nesting, each in
one line naming the file (or the ``--set``) and the line. A recipe file is at most
``MAX_RECIPE_BYTES`` and names at least one of the sections model, data, train, sparsity.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import ConfigError, did_you_mean
from ..core.validate import DEPTH_LIMIT, TEXT_LIMIT, check_text, check_tree, from_dict, show
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


MAX_RECIPE_BYTES = 1 << 20  # the largest recipe file read: a real one is a few hundred bytes
_SECTIONS_THAT_TRAIN = ("model", "data", "train", "sparsity")


class _Refused(yaml.YAMLError):
    """YAML that parses but that a recipe never needs (duplicate keys, aliases, deep nesting)."""

    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses, naming the line: a key given twice in one mapping (safe
    loading keeps the last one silently), a key that is not a string, an alias of an anchor
    (``*name``: what a document that expands exponentially is built from; an undefined one
    stays a YAML error), a merge key, and nesting deeper than ``DEPTH_LIMIT`` (the composer
    recurses once per level)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent) and self.peek_event().anchor in self.anchors:
            event = self.peek_event()
            raise _Refused(
                f"alias *{event.anchor} is not allowed in a recipe; write the value out",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > DEPTH_LIMIT:
                raise _Refused(
                    f"nested deeper than {DEPTH_LIMIT} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            mark = key_node.start_mark
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Refused("merge keys (<<) are not allowed in a recipe", mark)
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise _Refused(f"key {show(key)} is not a string; keys are names", mark)
            if key in first:
                raise _Refused(
                    f"duplicate key {show(key)} (first given at line {first[key]})", mark
                )
            first[key] = mark.line + 1
        return super().construct_mapping(node, deep)


# YAML 1.1 reads a float only with a dot (``1.0e-4``); ``1e-4``, ``5E3`` and ``-2e+1`` would be
# strings and fail as "expected a number, got '1e-4'". They are floats in a recipe (YAML 1.2).
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def load_yaml(text: str, what: str) -> Any:
    """Parse YAML text with ``RecipeLoader``; any failure is a one-line ConfigError starting with
    ``what`` (``recipe FILE``, ``--set 'key=value'``)."""
    try:
        return yaml.load(text, Loader=RecipeLoader)
    except yaml.YAMLError as e:
        raise _one_line(e, what) from None


def _one_line(e: yaml.YAMLError, what: str) -> ConfigError:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or "invalid YAML"
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow; no mark
        char = e.character if isinstance(e.character, str) else chr(e.character)
        return ConfigError(
            f"{what}: invalid YAML at character {e.position}: {e.reason} "
            f"(U+{ord(char):04X}); a recipe is printable text"
        )
    if isinstance(e, _Refused):  # "recipe r.yaml: line 4, column 3: duplicate key 'lr' (...)"
        return ConfigError(f"{what}: line {mark.line + 1}, column {mark.column + 1}: {problem}")
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return ConfigError(f"{what}: invalid YAML{where}: {problem}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file; every failure is a one-line ConfigError naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
        if len(raw) > MAX_RECIPE_BYTES:
            raise ConfigError(
                f"recipe {path}: larger than {MAX_RECIPE_BYTES} bytes; a recipe is a few hundred"
            )
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"recipe file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"cannot read recipe {path}: is a directory; give a YAML file") from None
    except PermissionError:
        raise ConfigError(f"cannot read recipe {path}: permission denied") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"cannot read recipe {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
            f"offset {e.start}); a recipe is a YAML text file"
        ) from None
    data = load_yaml(text, f"recipe {path}")
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"recipe {path}: expected a mapping of sections, got {type(data).__name__}"
        )
    if not data or not any(k in data for k in _SECTIONS_THAT_TRAIN):
        raise ConfigError(
            f"recipe {path} is empty: no model, data, train or sparsity section (it would train "
            "every default); write at least one, e.g. 'model: {name: resnet20}'"
        )
    return data


def parse_set(item: str) -> tuple[list[str], Any]:
    """Parse one ``--set key.sub=value``; the value is read as YAML (``0.5``, ``true``, ``[a]``)."""
    if "=" not in item:
        raise ConfigError(f"--set {show(item)}: expected key.sub=value, e.g. train.epochs=5")
    key, _, raw = item.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"--set {show(item)}: expected key.sub=value, e.g. train.epochs=5")
    value: Any = ""
    if raw.strip():
        try:
            value = yaml.load(raw, Loader=RecipeLoader)
        except _Refused as e:
            raise _one_line(e, f"--set {show(item)}") from None
        except yaml.YAMLError:
            value = raw  # not YAML: the text as a string
    return parts, value


def apply_sets(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Return a copy of the raw recipe mapping with ``--set`` overrides applied."""
    data = copy.deepcopy(data)
    for item in sets or []:
        parts, value = parse_set(item)
        if parts[0] not in SECTIONS:
            raise ConfigError(
                f"--set {show(item)}: unknown section {show(parts[0])}"
                f"{did_you_mean(parts[0], SECTIONS)}; "
                f"choose from: {', '.join(SECTIONS)}"
            )
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {show(item)}: {show(p)} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def parse_recipe(data: dict[str, Any]) -> Recipe:
    """Validate a raw recipe mapping into a typed ``Recipe``."""
    if not isinstance(data, dict):
        raise ConfigError(f"recipe: expected a mapping of sections, got {type(data).__name__}")
    check_tree(data)
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(
                f"recipe: unknown section {show(key)}{did_you_mean(key, SECTIONS)}; "
                f"allowed: {', '.join(SECTIONS)}"
            )
    check_text(_text(data, "name"), "name")
    if len(_text(data, "description")) > 8 * TEXT_LIMIT:  # free text: lines allowed
        raise ConfigError(f"description: expected at most {8 * TEXT_LIMIT} characters")
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
    check_tree(data)
    return parse_recipe(apply_sets(data, sets or []))


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {show(value)}")
    return value
