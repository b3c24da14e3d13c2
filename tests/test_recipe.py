from pathlib import Path

import pytest
import yaml

from sparsegrain.core.errors import ConfigError
from sparsegrain.recipe.load import apply_sets, load_recipe, parse_set

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_defaults_resolve():
    r = load_recipe({})
    assert r.model.name == "resnet20"
    assert r.data.name == "fashion_mnist"
    assert r.train.epochs == 10 and r.train.lr == 0.1 and r.train.schedule == "cosine"
    assert r.sparsity.method == "dense"


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load_and_round_trip(path):
    r = load_recipe(path)
    again = load_recipe(yaml.safe_load(r.dump()))
    assert again.to_dict() == r.to_dict()


def test_round_trip_keeps_method_params_and_model_options():
    data = {
        "model": {"name": "resnet50", "layout": "v1", "width": 32},
        "sparsity": {
            "method": "campfire",
            "structure": "kernel-quota",
            "target": 0.7,
            "start": 1,
            "end": 4,
            "overrides": {"layer1.*": {"target": 0.5}},
        },
    }
    r = load_recipe(data)
    d = r.to_dict()
    assert d["model"] == {"name": "resnet50", "layout": "v1", "width": 32}
    assert d["sparsity"]["end"] == 4.0 and d["sparsity"]["overrides"] == {
        "layer1.*": {"target": 0.5}
    }
    assert load_recipe(d).to_dict() == d


def test_set_overrides():
    assert parse_set("train.epochs=5") == (["train", "epochs"], 5)
    assert parse_set("sparsity.exclude=[]") == (["sparsity", "exclude"], [])
    assert parse_set("data.root=/x/y") == (["data", "root"], "/x/y")
    out = apply_sets({"train": {"lr": 0.1}}, ["train.lr=0.05", "sparsity.method=campfire"])
    assert out == {"train": {"lr": 0.05}, "sparsity": {"method": "campfire"}}
    r = load_recipe({}, ["train.epochs=3", "model.width=8"])
    assert r.train.epochs == 3 and r.model.options == {"width": 8}


@pytest.mark.parametrize(
    "data, sets, message",
    [
        ({"trian": {}}, [], "unknown section 'trian' (did you mean 'train'?)"),
        ({"train": {"lr": -1}}, [], "train.lr: must be in (0, inf], got -1"),
        ({"train": {"epocs": 3}}, [], "train: unknown key 'epocs' (did you mean 'epochs'?)"),
        ({"train": {"epochs": "ten"}}, [], "train.epochs: expected an integer, got 'ten'"),
        (
            {"train": {"schedule": "cosin"}},
            [],
            "train.schedule: unknown value 'cosin' (did you mean 'cosine'?)",
        ),
        ({"model": {"name": "resnet21"}}, [], "unknown model 'resnet21' (did you mean"),
        ({"model": {"widht": 8}}, [], "has no option 'widht' (did you mean 'width'?)"),
        (
            {"sparsity": {"method": "campfir"}},
            [],
            "unknown method 'campfir' (did you mean 'campfire'?)",
        ),
        (
            {"sparsity": {"method": "campfire", "target": 1.0, "end": 1}},
            [],
            "sparsity.target: must be in [0, 1), got 1.0",
        ),
        ({"sparsity": {"method": "campfire", "target": 0.5}}, [], "sparsity.end: required"),
        (
            {"sparsity": {"method": "campfire", "target": 0.5, "end": 1, "strcture": "fine"}},
            [],
            "unknown key 'strcture' (did you mean 'structure'?)",
        ),
        (
            {"sparsity": {"scope": "globl"}},
            [],
            "sparsity.scope: unknown value 'globl' (did you mean 'global'?)",
        ),
        (
            {"sparsity": {"overrides": {"fc": {"targt": 0.1}}}},
            [],
            "sparsity.overrides.fc.targt: unknown key (did you mean 'target'?)",
        ),
        (
            {"sparsity": {"method": "campfire", "target": 0.5, "start": 2, "end": 1}},
            [],
            "sparsity.end: must be >= start",
        ),
        ({}, ["train.epochs"], "expected key.sub=value"),
        ({}, ["tran.epochs=3"], "unknown section 'tran' (did you mean 'train'?)"),
    ],
)
def test_bad_recipes_name_the_problem(data, sets, message):
    with pytest.raises(ConfigError) as e:
        load_recipe(data, sets)
    assert message in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_recipe(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections, got int"):
        load_recipe(scalar)


def test_scope_defaults_per_method():
    assert load_recipe({"sparsity": {"method": "campfire", "end": 1}}).sparsity.scope == "layer"
    assert load_recipe({"sparsity": {"method": "feather"}}).sparsity.scope == "global"
    assert load_recipe({"sparsity": {"method": "feather", "scope": "layer"}}).sparsity.scope == (
        "layer"
    )
