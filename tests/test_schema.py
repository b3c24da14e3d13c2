"""Every recipe key, found by walking the schema (the section dataclasses, every method's
``Params``, ``sparsity.overrides`` entries and every zoo model's options), takes hostile values:
either the recipe parses and the value is within the key's declared bounds, or ``load_recipe``
raises a one-line ConfigError that starts with the key path."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsegrain import cli
from sparsegrain.core.errors import ConfigError
from sparsegrain.core.validate import INT_LIMIT, ITEMS_LIMIT, TEXT_LIMIT, Range, schema
from sparsegrain.data.catalog import DataConfig
from sparsegrain.methods import METHODS
from sparsegrain.models import MODELS, Option, option_specs
from sparsegrain.recipe.config import ModelConfig, Override, SparsityConfig, TrainConfig
from sparsegrain.recipe.load import Recipe, load_recipe


@dataclass(frozen=True)
class Key:
    """One recipe key: its path, the recipe it is set in, and what bounds it declares."""

    path: str
    base: dict  # the recipe the value is set into (a deep copy is made per value)
    tp: Any = None  # dataclass field: annotation type and Range
    rng: Range | None = None
    option: Option | None = None  # zoo model option

    @property
    def section(self) -> str:
        return self.path.split(".")[0]

    @property
    def name(self) -> str:
        return self.path.split(".")[-1]

    def recipe(self, value: Any) -> dict:
        data = yaml.safe_load(yaml.safe_dump(self.base))  # a fresh copy
        *parents, last = self.path.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
        return data

    def read(self, r: Recipe) -> Any:
        section, *rest = self.path.split(".")
        obj = getattr(r, section)
        if section == "model" and self.option is not None:
            return obj.options[self.name]
        if rest[0] == "overrides" and len(rest) == 3:
            return obj.overrides[rest[1]][rest[2]]
        if section == "sparsity" and rest[0] not in schema(SparsityConfig):
            return obj.params[rest[0]]
        return getattr(obj, rest[0])


DATA = {"name": "synthetic", "synthetic_train": 8, "synthetic_test": 8, "image_size": 4}


def discover() -> list[Key]:
    keys = []
    bases = {
        "model": (ModelConfig, {"model": {"name": "resnet20"}}),
        "data": (DataConfig, {"data": DATA}),
        "train": (TrainConfig, {}),
        "sparsity": (SparsityConfig, {}),
    }
    for section, (cls, base) in bases.items():
        for name, (tp, rng) in schema(cls).items():
            keys.append(Key(f"{section}.{name}", base, tp, rng))
    for method in METHODS.names():
        for name, (tp, rng) in schema(METHODS.get(method).Params).items():
            keys.append(Key(f"sparsity.{name}", {"sparsity": {"method": method}}, tp, rng))
    for name, (tp, rng) in schema(Override).items():
        keys.append(Key(f"sparsity.overrides.fc.{name}", {}, tp, rng))
    for model in MODELS.names():
        for name, opt in (option_specs(model) or {}).items():
            keys.append(Key(f"model.{name}", {"model": {"name": model}}, option=opt))
    return keys


KEYS = discover()


def test_discovery_finds_every_kind_of_key():
    paths = {k.path for k in KEYS}
    # one of each kind, so that a broken walk cannot pass by finding nothing
    assert {"train.lr", "data.batch_size", "model.num_classes", "sparsity.target"} <= paths
    assert {"sparsity.rho", "sparsity.theta", "sparsity.overrides.fc.initial"} <= paths
    assert {"model.width", "model.layout", "model.input_size"} <= paths


def test_every_number_key_declares_its_bounds():
    for key in KEYS:
        if key.option is None and _numeric(key.tp):
            assert key.rng is not None, f"{key.path}: declare a Range in its annotation"


def _numeric(tp: Any) -> bool:
    if tp in (int, float):
        return True
    return any(_numeric(a) for a in typing.get_args(tp))


# ---- what "within the declared bounds" means, written out independently of core.validate ------


def within(value: Any, tp: Any, rng: Range | None) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(within(value, a, rng) for a in typing.get_args(tp))
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is bool:
        return type(value) is bool
    if tp is str:
        return type(value) is str and len(value) <= TEXT_LIMIT and value.isprintable()
    if tp is int:
        return type(value) is int and _in(value, rng or Range(), top=INT_LIMIT)
    if tp is float:
        if type(value) is not float or math.isnan(value):
            return False
        return (math.isfinite(value) or bool(rng and rng.inf)) and _in(value, rng or Range())
    if origin is list:
        (arg,) = typing.get_args(tp)
        return (
            isinstance(value, list)
            and len(value) <= ITEMS_LIMIT
            and all(within(v, arg, rng) for v in value)
        )
    if origin is dict:
        return isinstance(value, dict) and all(type(k) is str and k.isprintable() for k in value)
    raise AssertionError(f"no rule for {tp}")


def _in(value, rng: Range, top=None) -> bool:
    if rng.lo is not None and (value < rng.lo or (rng.lo_open and value == rng.lo)):
        return False
    hi = rng.hi if rng.hi is not None else (rng.limit or top)
    return hi is None or value < hi or (value == hi and not (rng.hi_open and rng.hi is not None))


def option_within(value: Any, opt: Option) -> bool:
    if isinstance(opt.default, bool):
        return type(value) is bool
    if isinstance(opt.default, int):
        return (
            type(value) is int
            and opt.minimum <= value <= opt.maximum
            and value % opt.multiple_of == 0
        )
    return value in opt.choices


def check(key: Key, value: Any) -> None:
    """The property: parses within bounds, or one line starting with the key path."""
    try:
        r = load_recipe(key.recipe(value))
    except ConfigError as e:
        msg = str(e)
        assert len(msg.splitlines()) == 1 and "\n" not in msg, (key.path, value, msg)
        # a rule between keys may lead with the other key, naming this one
        ok = msg.startswith(key.path) or (msg.startswith(key.section) and key.name in msg)
        assert ok, (key.path, value, msg)
        return
    parsed = key.read(r)
    ok = option_within(parsed, key.option) if key.option else within(parsed, key.tp, key.rng)
    assert ok, (key.path, value, parsed)
    again = load_recipe(yaml.safe_load(r.dump()))  # and what parses round-trips
    assert again.to_dict() == r.to_dict()


def nested(depth: int, leaf: Any = 1) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"k": leaf}
    return leaf


NAN, INF = float("nan"), float("inf")
HOSTILE = [
    NAN, INF, -INF, 1e308, -1e-320, 10**30, -(10**30), 2**63, 2**64, 10**400,
    -1, 0, 1, 3, 0.5, 1.5, True, False, None,
    "", "x", "1", "nan", "a\nb", "a\u2028b", "\x00", "x" * (TEXT_LIMIT + 1),
    [], [1], [NAN], ["a"], [[["deep"]]], list(range(ITEMS_LIMIT + 1)),
    {}, {"a": 1}, {"target": NAN}, {1: 2}, {"fc": {"target": 0.5}},
    nested(40), nested(5000),
]  # fmt: skip


@pytest.mark.parametrize("key", KEYS, ids=[f"{i}-{k.path}" for i, k in enumerate(KEYS)])
def test_hostile_values(key):
    for value in HOSTILE:
        check(key, value)


leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["fine", "kernel", "l1", "layer", "cosine", "boost", "v1", "fc"])
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=values)
def test_any_value_parses_within_bounds_or_names_the_key(key, value):
    check(key, value)


def test_defaults_are_within_bounds():
    for cls in (ModelConfig, DataConfig, TrainConfig, SparsityConfig, Override):
        for f in dataclasses.fields(cls):
            if f.name in schema(cls):
                tp, rng = schema(cls)[f.name]
                default = f.default_factory() if callable(f.default_factory) else f.default
                assert within(default, tp, rng), (cls.__name__, f.name, default)
    for model in MODELS.names():
        for name, opt in (option_specs(model) or {}).items():
            assert option_within(opt.default, opt), (model, name)


# ---- the command line: --set KEY=VALUE, one stderr line, exit 2 --------------------------------

SET_VALUES = [
    ".nan", ".inf", "-.inf", "1" + "0" * 40, "-5", "true", "x", "[1, 2]", "{a: 1}", "null",
    '"a\\nb"', "[" * 30 + "]" * 30, "{a: 1, a: 2}", "{1: x}",
]  # fmt: skip


def cli_cases() -> list[tuple[Key, str]]:
    """For every key, the values of SET_VALUES that load_recipe refuses (a refused value stops
    before training, so the sample stays fast)."""
    out = []
    for i, key in enumerate(KEYS):
        for text in SET_VALUES[i % 3 :: 3]:
            try:
                load_recipe(key.base, [f"{key.path}={text}"])
            except ConfigError:
                out.append((key, text))
    return out


def test_cli_set_hostile_values(tmp_path, capsys):
    cases = cli_cases()
    assert len(cases) > len(KEYS)
    for key, text in cases:
        recipe = tmp_path / "r.yaml"
        recipe.write_text(yaml.safe_dump({"train": {"epochs": 1}, **key.base}))
        code = cli.main(
            [
                "train",
                "--recipe",
                str(recipe),
                "--out",
                str(tmp_path / "out"),
                "--set",
                f"{key.path}={text}",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2, (key.path, text, err)
        assert len(err.splitlines()) == 1 and err.startswith("sparsegrain: error: "), err
        assert key.name in err or "--set" in err, (key.path, text, err)
        assert not (tmp_path / "out").exists()
