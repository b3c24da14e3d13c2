from pathlib import Path

import pytest
import yaml

import sparsegrain
from sparsegrain.core.errors import ConfigError
from sparsegrain.models import create_model
from sparsegrain.recipe.build import build_model
from sparsegrain.recipe.load import apply_sets, load_recipe, parse_set

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_defaults_resolve():
    r = load_recipe({})
    assert r.model.name == "resnet20"
    assert r.data.name == "fashion_mnist"
    assert r.train.epochs == 10 and r.train.lr == 0.1 and r.train.schedule == "cosine"
    assert r.sparsity.method == "dense"


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load_and_round_trip(path, tmp_path):
    r = load_recipe(path)
    again = load_recipe(yaml.safe_load(r.dump()))
    assert again.to_dict() == r.to_dict()
    saved = tmp_path / "recipe.yaml"  # what a run directory holds, read back by --resume
    saved.write_text(r.dump())
    assert load_recipe(saved).to_dict() == r.to_dict()


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


# ---- YAML a recipe never needs -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty: no model, data, train or sparsity section"),
        ("# a comment\n", "is empty: no model, data, train or sparsity section"),
        ("{}\n", "is empty"),
        ("name: x\ndescription: y\n", "is empty"),
        (
            "train:\n  lr: 0.1\n  lr: 0.2\n",
            "line 3, column 3: duplicate key 'lr' (first given at line 2)",
        ),
        (
            "train: {}\ntrain: {}\n",
            "line 2, column 1: duplicate key 'train' (first given at line 1)",
        ),
        ("train: &a {epochs: 1}\nmodel: *a\n", "line 2, column 8: alias *a is not allowed"),
        ("train:\n  <<: {lr: 0.1}\n", "line 2, column 3: merge keys (<<) are not allowed"),
        ("train:\n  1: 2\n", "line 2, column 3: key 1 is not a string"),
        ("train:\n  on: 2\n", "key True is not a string"),
        ("train:\n  ? [a]\n  : 1\n", "key ['a'] is not a string"),
        ("train: {lr: " + "[" * 17 + "]" * 17 + "}\n", "nested deeper than 16 levels"),
        ("train: {lr: " + "[" * 100_000 + "]" * 100_000 + "}\n", "nested deeper than 16 levels"),
        ("train: {lr: .nan}\n", "train.lr: expected a finite number, got nan"),
        ("train: {lr: !!python/name:os.system}\n", "invalid YAML at line 1"),
    ],
)
def test_yaml_refusals_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1
    assert str(e.value).startswith(("recipe ", "train.lr"))


def test_huge_recipe_file_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("train: {epochs: 1}\n" + "#" * (1 << 20))
    with pytest.raises(ConfigError, match="big.yaml: larger than 1048576 bytes"):
        load_recipe(path)


def test_set_values_use_the_same_loader():
    with pytest.raises(ConfigError, match=r"^--set .*duplicate key 'a'"):
        parse_set("model.options={a: 1, a: 2}")
    with pytest.raises(ConfigError, match="alias"):
        parse_set("train.milestones=[&x 1, *x]")
    assert parse_set("sparsity.include=*conv2") == (["sparsity", "include"], "*conv2")
    assert parse_set("data.root=[1, 2") == (["data", "root"], "[1, 2")  # not YAML: the text


def test_python_structures_too_deep_or_cyclic_are_refused():
    cyclic: dict = {}
    cyclic["a"] = cyclic
    with pytest.raises(ConfigError, match=r"^train\.a\.a.*nested deeper than 16 levels"):
        load_recipe({"train": cyclic})
    deep: list = []
    node = deep
    for _ in range(100_000):
        node.append([])
        node = node[0]
    with pytest.raises(ConfigError, match=r"^model\.width\[0\]\[0\].*nested deeper"):
        load_recipe({"model": {"width": deep}})


# ---- the recipe against the data and the model -------------------------------------------------


def test_explicit_model_sizes_must_agree_with_the_data():
    r = load_recipe(
        {"model": {"name": "mlp_tiny", "num_classes": 5}, "data": {"name": "synthetic"}}
    )
    with pytest.raises(ConfigError) as e:
        build_model(r, num_classes=10, in_channels=1)
    assert str(e.value) == (
        "model.num_classes: 5 disagrees with dataset 'synthetic', which has 10 classes; "
        "set model.num_classes to 10 or leave it unset"
    )
    r = load_recipe({"model": {"name": "resnet_tiny", "in_channels": 3}})
    with pytest.raises(ConfigError, match="model.in_channels: 3 disagrees with dataset "):
        build_model(r, num_classes=10, in_channels=1)
    r = load_recipe({"model": {"name": "resnet_tiny", "in_channels": 1, "num_classes": 10}})
    assert build_model(r, num_classes=10, in_channels=1).conv1.in_channels == 1


def test_a_model_too_large_to_allocate_is_refused_before_allocating():
    r = load_recipe({"model": {"name": "resnet50", "width": 4096}})
    with pytest.raises(ConfigError, match=r"^model: 'resnet50' with .*width 4096 has \d+ param"):
        build_model(r, num_classes=1000, in_channels=3)


def test_override_pattern_must_match_a_layer():
    model = create_model("mlp_tiny", num_classes=10, in_channels=1, input_size=8)
    cfg = {"method": "campfire", "target": 0.5, "end": 1, "overrides": {"fc2": {"target": 0.3}}}
    with pytest.raises(ConfigError) as e:
        sparsegrain.sparsify_(model, cfg, steps_per_epoch=2)
    assert str(e.value) == (
        "sparsity.overrides: pattern 'fc2' matches no layer; candidates (conv, linear): fc1, fc"
    )
    cfg["overrides"] = {"fc*": {"target": 0.3}}
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=2)
    assert {layer.name: layer.target for layer in sp.layers} == {"fc1": 0.3, "fc": 0.0}


def test_overrides_are_typed_and_keep_only_the_keys_given():
    r = load_recipe({"sparsity": {"overrides": {"fc": {"initial": 0, "score": "l2"}}}})
    assert r.sparsity.overrides == {"fc": {"initial": 0.0, "score": "l2"}}
    for keys, message in [
        ({"target": None}, "sparsity.overrides.fc.target: expected a number, got None"),
        ({"score": "l3"}, "sparsity.overrides.fc.score: unknown value 'l3'"),
        ({"structure": "kernl"}, "sparsity.overrides.fc.structure: unknown structure 'kernl'"),
        ({"fallback": "dens"}, "sparsity.overrides.fc.fallback: must be 'error', 'dense' or a"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_recipe({"sparsity": {"overrides": {"fc": keys}}})
        assert str(e.value).startswith(message)
