"""One way into ``sparsify_``: every recipe form is validated alike, the clock needs
``steps_per_epoch``, and ``compact`` leaves the model it was given as it was."""

import dataclasses

import pytest
import torch
import yaml
from torch import nn

import sparsegrain
from sparsegrain.compact import compact
from sparsegrain.core.errors import ConfigError
from sparsegrain.recipe import SparsityConfig, load_recipe

CAMPFIRE = {"method": "campfire", "structure": "fine", "target": 0.5, "start": 0, "end": 0,
            "frequency": 1, "exclude": []}  # fmt: skip


def three_linears() -> nn.Module:
    """Three layers whose weights differ in scale, so one global threshold would spread the
    sparsity unevenly (layer scope gives each exactly its target)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 4))  # fmt: skip
    with torch.no_grad():
        for scale, layer in zip((1.0, 3.0, 0.2), model[::2]):
            layer.weight.mul_(scale)
    return model


def per_layer_sparsity(recipe) -> dict[str, float]:
    sp = sparsegrain.sparsify_(three_linears(), recipe, steps_per_epoch=1)
    sp.step()
    return {row["name"]: row["achieved"] for row in sp.report()}


def test_a_sparsity_config_built_directly_gets_the_defaults_parse_gives(tmp_path):
    built = SparsityConfig(**{k: v for k, v in CAMPFIRE.items()})
    assert built.scope is None  # the method's default is filled in by sparsify_
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"sparsity": CAMPFIRE}))
    expected = {"0": 0.5, "2": 0.5, "4": 0.5}  # campfire's default scope is per layer
    for form in (built, CAMPFIRE, {"sparsity": CAMPFIRE}, path, load_recipe(path)):
        assert per_layer_sparsity(form) == expected, form


def test_a_sparsity_config_built_directly_is_validated():
    with pytest.raises(ConfigError, match=r"sparsity\.target: must be in \[0, 1\), got 1.5"):
        sparsegrain.sparsify_(three_linears(), SparsityConfig(**{**CAMPFIRE, "target": 1.5}),
                              steps_per_epoch=1)  # fmt: skip
    with pytest.raises(ConfigError, match="unknown method 'campfir'"):
        sparsegrain.sparsify_(three_linears(), SparsityConfig(method="campfir"), steps_per_epoch=1)


def test_the_config_given_is_not_changed():
    built = SparsityConfig(**CAMPFIRE)
    before = dataclasses.asdict(built)
    sp = sparsegrain.sparsify_(three_linears(), built, steps_per_epoch=1)
    assert dataclasses.asdict(built) == before and sp.cfg.scope == "layer"


@pytest.mark.parametrize("method", ["campfire", "oneshot", "feather", "admm"])
def test_steps_per_epoch_is_required_by_a_method_with_a_clock(method):
    cfg = {**CAMPFIRE, "method": method}
    with pytest.raises(ConfigError) as err:
        sparsegrain.sparsify_(three_linears(), cfg)
    msg = str(err.value)
    assert msg.startswith(f"sparsify_: steps_per_epoch is required by method '{method}'")
    assert "len(train_loader)" in msg and "\n" not in msg


def test_a_dense_run_needs_no_clock():
    sp = sparsegrain.sparsify_(three_linears(), {"method": "dense"})
    sp.step()
    assert sp.pruned == [] and sp.steps == 1


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "10"])
def test_steps_per_epoch_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match=r"steps_per_epoch: expected an integer >= 1, got"):
        sparsegrain.sparsify_(three_linears(), CAMPFIRE, steps_per_epoch=bad)


def test_the_clock_counts_epochs_in_the_steps_given():
    cfg = {**CAMPFIRE, "start": 1, "end": 2, "frequency": 100}
    sp = sparsegrain.sparsify_(three_linears(), cfg, steps_per_epoch=4)
    for _ in range(3):
        sp.step()
    assert sp.epoch == 0.75 and all(row["achieved"] == 0.0 for row in sp.report())
    for _ in range(5):  # epoch 2: the end, the final masks
        sp.step()
    assert [row["achieved"] for row in sp.report()] == [0.5, 0.5, 0.5]


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    )  # fmt: skip


def test_compact_leaves_the_masked_model_as_it_was():
    model = conv_net()
    cfg = {**CAMPFIRE, "structure": "filter", "exclude": None}
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=1)
    sp.step()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = model(x)
    masks = sp.masks()
    result = compact(model, x)
    assert result.params_after < result.params_before  # conv 2 lost half its filters
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert all(torch.equal(masks[k], v) for k, v in sp.masks().items())
    assert type(model[2]).__name__ == "ParametrizedConv2d"  # still masked
    sp.step()  # the handle goes on as before
    sp.finalize()
    assert type(model[2]) is nn.Conv2d and sp.verify() == {}
