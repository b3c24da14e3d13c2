"""Sparse training through ``torch.compile``: the same masks and weights as eager, in a user's loop
(``sparsify_`` then ``torch.compile``) and in the built-in loop (``train.compile``), and mask
updates that never force a recompile (counted with dynamo's compile counter)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import tiny_recipe, train_cli
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import sparsegrain
from sparsegrain.core.errors import ConfigError
from sparsegrain.core.io import load_tensors
from sparsegrain.methods.feather import feather_threshold
from sparsegrain.models import create_model
from sparsegrain.recipe.load import load_recipe

STEPS = 10
FREQUENCY = 2  # mask updates at steps 1, 2, 4, 6 and 8 (the ramp), then frozen at step 8
CAMPFIRE = {
    "method": "campfire",
    "structure": "fine",
    "target": 0.75,
    "start": 0,
    "end": 1.0,
    "frequency": FREQUENCY,
    "exclude": [],
}
# Measured on CPU (torch 2.13, inductor): the compiled MLP's weights differ from eager by up to
# 7.5e-9 after ten steps (fused elementwise kernels round differently); the bound leaves room.
MLP_ATOL = 1e-6
LOOP_ATOL = 1e-5  # resnet_tiny through the loop (4 steps, BatchNorm): measured 5.1e-7


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _mlp_run(backend=None):
    """Ten SGD steps of campfire on mlp_tiny (8x8 grey input, hidden 16), eager or through
    ``torch.compile(model, backend=backend)``; returns the handle, the model and the counter."""
    torch.manual_seed(0)
    model = create_model("mlp_tiny", num_classes=4, in_channels=1, input_size=8, hidden=16)
    xs = torch.randn(STEPS, 16, 1, 8, 8)
    ys = torch.randint(0, 4, (STEPS, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sp = sparsegrain.sparsify_(model, CAMPFIRE, steps_per_epoch=8, optimizer=opt)
    forward = model if backend is None else torch.compile(model, backend=backend, dynamic=False)
    versions = []
    for x, y in zip(xs, ys):
        loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
        versions.append(sp.mask_version)
    return sp, model, versions


@pytest.fixture(scope="module")
def mlp_runs():
    torch._dynamo.reset()
    eager = _mlp_run()
    counter = CompileCounterWithBackend("inductor")
    compiled = _mlp_run(counter)
    torch._dynamo.reset()
    return eager, compiled, counter


@pytest.mark.slow
def test_user_loop_compiled_matches_eager(mlp_runs):
    (sp_e, model_e, versions_e), (sp_c, model_c, versions_c), _ = mlp_runs
    assert versions_e == versions_c == [1, 2, 2, 3, 3, 4, 4, 5, 5, 5]
    masks_e, masks_c = sp_e.masks(), sp_c.masks()
    assert sorted(masks_c) == ["fc", "fc1"]
    for name in masks_e:
        assert torch.equal(masks_e[name], masks_c[name]), name
        assert int((~masks_c[name]).sum()) == round(0.75 * masks_c[name].numel())
    state_e, state_c = model_e.state_dict(), model_c.state_dict()
    assert sorted(state_c) == sorted(state_e)  # the model itself, no _orig_mod. prefix
    for key in state_e:
        torch.testing.assert_close(state_c[key], state_e[key], rtol=0, atol=MLP_ATOL)
    for name, mask in masks_c.items():  # pruned weights are exact zeros in both
        weight = getattr(model_c, name).weight.detach()
        assert int((weight[~mask] != 0).sum()) == 0


@pytest.mark.slow
def test_user_loop_mask_updates_do_not_recompile(mlp_runs):
    _, (sp, _, versions), counter = mlp_runs
    assert sp.mask_version == 5 and versions[-1] == 5  # five mask updates during the steps
    assert counter.frame_count == 1  # one forward graph for all ten steps


# Each method's mask updates (campfire with BatchNorm masks and coupled filters, Feather's
# threshold, ADMM's Z/U updates and hard prune, PyTorch's tools) on resnet_tiny, channels_last,
# through dynamo with the eager backend: what triggers a recompile is dynamo's guards, whatever
# the backend behind them.
RAMP = {"start": 0, "end": 2.0, "frequency": 2}
METHOD_CASES = {
    "campfire-filter-couple": {
        "method": "campfire", "structure": "filter", "target": 0.5, "couple": True, **RAMP
    },
    "campfire-window": {
        "method": "campfire", "structure": "window", "target": 0.5, "fallback": "kernel-quota",
        **RAMP,
    },
    "feather": {"method": "feather", "structure": "fine", "target": 0.97, "end": 2.0},
    "admm": {"method": "admm", "structure": "filter", "target": 0.5, "admm_epochs": 1,
             "admm_periods": 1},
    "oneshot": {"method": "oneshot", "structure": "kernel", "target": 0.5},
    "torch-ao": {"method": "torch-ao", "structure": "block:1x4", "target": 0.5, **RAMP},
    "torch-prune": {"method": "torch-prune", "structure": "fine", "target": 0.5, **RAMP},
}  # fmt: skip
# Mask versions after the eight steps: campfire-like ramps update at steps 1, 2, 4, 6 and at the
# end (8); ADMM hard-prunes after its one period (4 steps); oneshot prunes at attach; Feather
# moves its threshold and masks in place every step without a mask version.
VERSIONS = {"admm": 1, "oneshot": 1, "feather": 0}


@pytest.mark.parametrize("case", sorted(METHOD_CASES))
def test_mask_updates_do_not_recompile(case):
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=4, in_channels=3)
    model = model.to(memory_format=torch.channels_last)
    xs = torch.randn(8, 8, 3, 12, 12).unbind(0)
    xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    ys = torch.randint(0, 4, (8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = sparsegrain.sparsify_(
        model, METHOD_CASES[case], steps_per_epoch=4, optimizer=opt, epochs=2,
        example_inputs=xs[0][:2],
    )  # fmt: skip
    counter = CompileCounterWithBackend("eager")
    forward = torch.compile(model, backend=counter, dynamic=False)
    thresholds = []
    for x, y in zip(xs, ys):
        loss = nn.functional.cross_entropy(forward(x), y) + sp.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
        if case == "feather":
            thresholds.append(sp.method.thresholds()["layer1.0.conv1"])
    assert counter.frame_count == 1, case  # no graph break, no recompile
    assert sp.mask_version == VERSIONS.get(case, 5), case
    if case == "feather":  # the threshold moved at every step
        assert len(set(thresholds)) == 8 and thresholds == sorted(thresholds)
    for name, mask in sp.masks().items():
        layer = next(layer for layer in sp.pruned if layer.name == name)
        assert int((layer.weight.detach()[~mask] != 0).sum()) == 0, (case, name)


@pytest.mark.parametrize("theta", [1.0, 0.5])
def test_feather_operator_compiles_to_one_graph_with_eager_values(theta):
    """Feather's operator traces as one graph on a channels_last weight (in place with ``out=``
    it broke the graph at every layer), with the values and gradients of the eager one."""
    torch.manual_seed(0)
    w0 = torch.randn(6, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    t = torch.tensor(0.8)

    def op(w):
        return feather_threshold(w, t, 3.0, theta)

    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(op, backend=counter, fullgraph=True)
    outs, grads = [], []
    for f in (op, compiled):
        w = w0.clone().requires_grad_(True)
        out = f(w)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append(w.grad)
    assert counter.frame_count == 1
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])
    assert int((outs[1] == 0).sum()) == int((w0.abs() <= 0.8).sum())
    scale = torch.where(w0.abs() <= 0.8, theta, 1.0)
    assert torch.equal(grads[1], torch.arange(w0.numel()).view_as(w0).float() * scale)


# ---- train.compile: the recipe keys and the built-in loop -------------------------------------


def test_compile_keys_defaults_and_errors():
    tr = load_recipe({}).train
    assert tr.compile is False and tr.compile_mode == "default"
    tr = load_recipe({"train": {"compile": True, "compile_mode": "max-autotune"}}).train
    assert tr.compile is True and tr.compile_mode == "max-autotune"
    with pytest.raises(ConfigError) as e:
        load_recipe({"train": {"compile": True, "compile_mode": "fast"}})
    assert str(e.value).startswith("train.compile_mode: unknown value 'fast'")
    assert "choose from: default, reduce-overhead, max-autotune" in str(e.value)
    with pytest.raises(ConfigError, match=r"^train.compile_mode: 'reduce-overhead' needs train"):
        load_recipe({"train": {"compile_mode": "reduce-overhead"}})
    with pytest.raises(ConfigError, match=r"^train.compile: "):
        load_recipe({"train": {"compile": "yes"}})


LOOP_SPARSITY = {"method": "campfire", "structure": "filter", "target": 0.5, "start": 0,
                 "end": 1.5, "frequency": 1}  # fmt: skip


def _write_recipe(path, compile_: bool):
    recipe = tiny_recipe(LOOP_SPARSITY, epochs=2)
    recipe["train"]["compile"] = compile_
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_train_compile_matches_eager_and_resumes(tmp_path, crash_and_resume):
    """``train.compile: true`` on resnet_tiny (campfire filter with BatchNorm masks, three mask
    updates), stopped after epoch 1 and resumed: the eager run's masks, its weights within
    float rounding, and checkpoints / weights named as the model's own state dict."""
    eager = tmp_path / "eager"
    assert train_cli("--recipe", _write_recipe(tmp_path / "e.yaml", False), "--out", eager) == 0
    compiled = tmp_path / "compiled"
    counters.clear()
    crash_and_resume(compiled, "--recipe", _write_recipe(tmp_path / "c.yaml", True), at=1)
    # one forward graph for the first run and one for the resumed run: the three mask updates
    # (steps 1, 2 and 3, the last after resume) rebuilt none
    assert counters["stats"]["unique_graphs"] == 2
    masks_e, _ = load_tensors(eager / "masks.safetensors")
    masks_c, _ = load_tensors(compiled / "masks.safetensors")
    assert sorted(masks_c) == sorted(masks_e) and len(masks_c) == 8
    for name in masks_e:
        assert torch.equal(masks_e[name], masks_c[name]), name
    weights_e, _ = load_tensors(eager / "model.safetensors")
    weights_c, _ = load_tensors(compiled / "model.safetensors")
    assert sorted(weights_c) == sorted(weights_e)
    assert not any("_orig_mod" in k for k in weights_c)
    for key in weights_e:
        torch.testing.assert_close(weights_c[key], weights_e[key], rtol=0, atol=LOOP_ATOL)
    saved, _ = load_tensors(compiled / "checkpoint.safetensors")
    assert not any("_orig_mod" in k for k in saved)


def test_sparsify_a_compiled_model_names_layers_as_the_plain_one():
    from sparsegrain.models import create_model

    plain = create_model("mlp_tiny", num_classes=10, in_channels=1)
    compiled = torch.compile(plain)  # nothing is compiled before its first call
    cfg = {"method": "oneshot", "structure": "fine", "target": 0.5, "exclude": []}
    sp = sparsegrain.sparsify_(compiled, cfg, steps_per_epoch=1)
    assert [layer.name for layer in sp.layers] == ["fc1", "fc"]
    fresh = sparsegrain.sparsify_(
        create_model("mlp_tiny", num_classes=10, in_channels=1), cfg, steps_per_epoch=1
    )
    fresh.load_state_dict(sp.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.masks().values(), sp.masks().values()))
