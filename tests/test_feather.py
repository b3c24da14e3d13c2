import copy
import math

import pytest
import torch
from conftest import assert_same_files
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import sparsegrain
from sparsegrain.core.errors import ConfigError
from sparsegrain.core.quantile import exact_quantile, quantile_rank, select_order_statistics
from sparsegrain.core.schedules import cubic_sparsity
from sparsegrain.methods.feather import default_theta, feather_threshold
from sparsegrain.sparsity import masking
from sparsegrain.structures import parse_structure


def convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.Conv2d(6, 10, 3), nn.Flatten(), nn.Linear(10, 2))


def feather(target=0.8, **keys):
    return {"method": "feather", "target": target, "exclude": [], "scope": "global", **keys}


def all_abs(sp):
    return torch.cat([layer.param.detach().abs().reshape(-1) for layer in sp.pruned])


# -- the operator ------------------------------------------------------------------------------
def test_operator_by_hand():
    w = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0])
    out = feather_threshold(w, 1.0, p=3.0)
    # |w| <= T = 1: exactly zero; else sign(w) * (|w|^3 - 1)^(1/3)
    zero = torch.tensor([False, True, True, True, True, True, False, False])
    assert torch.equal(out[zero], torch.zeros(5))
    expect = torch.tensor([-(7.0 ** (1 / 3)), 2.375 ** (1 / 3), 26.0 ** (1 / 3)])
    torch.testing.assert_close(out[~zero], expect, rtol=2e-7, atol=0)
    # p = 2: sqrt(5^2 - 3^2) = 4; p = 1 is soft thresholding: 5 - 3 = 2
    torch.testing.assert_close(
        feather_threshold(torch.tensor([5.0]), 3.0, p=2.0), torch.tensor([4.0])
    )
    torch.testing.assert_close(
        feather_threshold(torch.tensor([-5.0]), 3.0, p=1), torch.tensor([-2.0])
    )


def test_operator_is_the_identity_at_threshold_zero():
    w = torch.randn(1000) * torch.logspace(-30, 3, 1000)
    assert torch.equal(feather_threshold(w, 0.0), w)


@pytest.mark.parametrize("theta", [1.0, 0.5, 0.0])
def test_straight_through_gradient_scaled_by_theta_on_pruned_entries(theta):
    w = torch.tensor([-2.0, -0.5, 0.25, 1.0, 3.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, -4.0, 8.0, 0.5])
    feather_threshold(w, 1.0, theta=theta).backward(g)
    # kept: |w| > 1 (entries 0 and 4) get g; pruned (|w| <= 1, the tie included) get theta * g
    expect = torch.tensor([1.0, 2.0 * theta, -4.0 * theta, 8.0 * theta, 0.5])
    assert torch.equal(w.grad, expect)


def test_theta_rule():
    assert default_theta(0.96) == 0.5 and default_theta(0.999) == 0.5
    assert default_theta(0.95) == 1.0 and default_theta(0.9) == 1.0 and default_theta(0.0) == 1.0
    model = convnet()
    sp = sparsegrain.sparsify_(model, feather(0.97), steps_per_epoch=2, epochs=4)
    assert {masking.parametrization(l).theta for l in sp.pruned} == {0.5}
    sp = sparsegrain.sparsify_(convnet(), feather(0.97, theta=0.25), steps_per_epoch=2, epochs=4)
    assert {masking.parametrization(l).theta for l in sp.pruned} == {0.25}
    # scope layer: each layer's own final target decides
    cfg = feather(0.9, scope="layer", overrides={"1": {"target": 0.98}})
    sp = sparsegrain.sparsify_(convnet(), cfg, steps_per_epoch=2, epochs=4)
    thetas = {l.name: masking.parametrization(l).theta for l in sp.pruned}
    assert thetas == {"0": 1.0, "1": 0.5, "3": 1.0}


def test_parametrized_layer_scales_the_gradient_of_pruned_weights():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.2, 0.3, -0.4], [0.5, -0.6, 0.7, -0.8]]))
    model = nn.Sequential(layer)
    # target 0.97 over 8 weights: the quantile at rank 0.97 * 7 = 6.79 lies between 0.7 and 0.8
    sp = sparsegrain.sparsify_(model, feather(0.97, end=0), steps_per_epoch=1)
    assert sp.masks()["0"].tolist() == [[False] * 4, [False, False, False, True]]
    g = torch.arange(1.0, 9.0).reshape(2, 4)
    (layer.weight * g).sum().backward()
    expect = g * 0.5
    expect[1, 3] = 8.0
    assert torch.equal(sp.pruned[0].param.grad, expect)


# -- the exact quantile ------------------------------------------------------------------------
values = st.one_of(
    st.floats(-1e6, 1e6, width=32),
    st.sampled_from([0.0, 1.0, -1.0, 0.5]),  # duplicates
)
qs = st.one_of(
    st.floats(0.0, 1.0),
    st.sampled_from([0.0, 1.0, 0.5, 1 - 1e-7, 0.9999, 1e-7, 1 / 3]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=300), qs)
def test_exact_quantile_equals_torch_quantile(xs, q):
    x = torch.tensor(xs, dtype=torch.float32)
    assert torch.equal(exact_quantile(x, q), torch.quantile(x, q))


@pytest.mark.parametrize("n", [1, 2, 65536, 65537, 200_003])
@pytest.mark.parametrize("q", [0.0, 1e-6, 0.3, 0.9, 0.97, 1 - 1e-7, 1.0])
def test_exact_quantile_on_sizes_past_the_direct_select(n, q):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g).abs()
    x[: n // 3] = x[n // 3 : 2 * (n // 3)]  # a third are duplicates
    assert torch.equal(exact_quantile(x, q), torch.quantile(x, q))
    assert torch.equal(exact_quantile(x.double(), q), torch.quantile(x.double(), q))


def test_band_selection_falls_back_when_the_sample_misses():
    # every sampled element (x[::8]) is large, all others small: the band misses the ranks
    n = 70_000
    x = torch.zeros(n)
    x[::8] = 100.0 + torch.arange(len(x[::8]), dtype=torch.float32)
    v = torch.sort(x).values
    for lo in (0, 100, n // 2, n - 2):
        got = select_order_statistics(x, lo, lo + 1)
        assert torch.equal(torch.stack(got), v[lo : lo + 2])


def test_exact_quantile_edge_cases():
    assert math.isnan(float(exact_quantile(torch.tensor([1.0, float("nan"), 2.0]), 0.5)))
    assert float(exact_quantile(torch.tensor([3.5]), 0.7)) == 3.5
    assert exact_quantile(torch.tensor([1.0, 2.0], dtype=torch.float16), 0.5).dtype == torch.float32
    with pytest.raises(ValueError, match=r"q must be in \[0, 1\], got 1.5"):
        exact_quantile(torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="floating-point"):
        exact_quantile(torch.ones(3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="empty"):
        exact_quantile(torch.ones(0), 0.5)


def test_rank_past_the_torch_quantile_limit_is_exact():
    # torch.quantile refuses n > 2**24; there the rank is computed in float64
    n = 2**25 + 1
    lo, hi, w = quantile_rank(n, 0.9, torch.float32)
    assert (lo, hi) == (30198988, 30198989) and float(w) == pytest.approx(0.8, abs=1e-6)
    assert quantile_rank(2**24, 0.5, torch.float32)[:2] == (8388607, 8388608)


# -- the schedule ------------------------------------------------------------------------------
def test_s_t_follows_the_cubic_ramp_over_half_of_training():
    sp = sparsegrain.sparsify_(convnet(), feather(0.9), steps_per_epoch=4, epochs=8)
    assert (sp.method.start, sp.method.end) == (0.0, 4.0)
    # s_t = 0 gives T = 0 (not min |w|): nothing is pruned and the operator is the identity
    assert set(sp.method.thresholds().values()) == {0.0}
    assert all(bool(m.all()) for m in sp.masks().values())
    seen = [sp.method.sparsity]
    for _ in range(20):
        sp.step()
        seen.append(sp.method.sparsity)
    assert seen[0] == 0.0
    assert seen[8] == 0.9 - 0.9 * 0.5**3  # epoch 2 of a 0..4 ramp: 0.7875
    assert seen[4] == 0.9 - 0.9 * 0.75**3
    assert seen[16:] == [0.9] * 5
    assert seen == [
        cubic_sparsity(i / 4, initial=0.0, final=0.9, start=0.0, end=4.0) for i in range(21)
    ]


def test_ramp_keys():
    sp = sparsegrain.sparsify_(
        convnet(), feather(0.9, ramp_start=1, ramp_end=3), steps_per_epoch=2, epochs=10
    )
    assert (sp.method.start, sp.method.end) == (1.0, 3.0)
    sp = sparsegrain.sparsify_(convnet(), feather(0.9, start=0.5, end=2), steps_per_epoch=2)
    assert (sp.method.start, sp.method.end) == (0.5, 2.0)
    with pytest.raises(ConfigError, match="sparsity.end: method 'feather' needs the epoch its"):
        sparsegrain.sparsify_(convnet(), feather(0.9), steps_per_epoch=2)
    with pytest.raises(ConfigError, match=r"ramp_end \(3.0\) and sparsity.end \(2.0\) disagree"):
        sparsegrain.sparsify_(convnet(), feather(0.9, end=2, ramp_end=3), steps_per_epoch=2)
    with pytest.raises(ConfigError, match="sparsity.theta: must be in"):
        sparsegrain.sparsify_(convnet(), feather(0.9, theta=2), steps_per_epoch=2, epochs=2)


@pytest.mark.parametrize("structure", ["kernel", "nm:2:4"])
def test_other_structures_are_refused(structure):
    cfg = feather(0.5, structure=structure, types=["conv"])
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3))
    expected = f"sparsity.structure: method 'feather' supports 'fine' only; got '{structure}'"
    with pytest.raises(ConfigError) as e:
        sparsegrain.sparsify_(model, cfg, steps_per_epoch=2, epochs=2)
    assert str(e.value) == expected  # refused when the recipe is read, before any layer


def test_a_structure_reaching_a_layer_another_way_is_refused_naming_the_layer():
    """A fallback structure is known only per layer: the attach-time check names the layer."""
    cfg = feather(0.5, structure="fine", types=["conv"])
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3))
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=2, epochs=2)
    sp.pruned[0].structure = parse_structure("kernel")
    with pytest.raises(ConfigError, match="method 'feather' supports 'fine' only.*layer '0'"):
        sp.method.attach()


# -- end to end --------------------------------------------------------------------------------
def user_loop(model, cfg, epochs=3, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = [(torch.randn(8, 2, 5, 5), torch.randint(0, 2, (8,))) for _ in range(4)]
    sp = sparsegrain.sparsify_(
        model, cfg, steps_per_epoch=len(loader), optimizer=opt, epochs=epochs
    )
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y) + sp.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sp.step()
    return sp, opt, loader


def test_user_loop_reaches_the_target_and_finalizes_to_thresholded_weights():
    model = convnet()
    sp, _, _ = user_loop(model, feather(0.8))
    n = sum(l.param.numel() for l in sp.pruned)  # 108 + 540 + 20 = 668
    t = sp.method.thresholds()["0"]
    assert set(sp.method.thresholds().values()) == {t}
    assert t == float(torch.quantile(all_abs(sp), 0.8))  # one global threshold, exact
    pruned = sum(int((~m).sum()) for m in sp.masks().values())
    assert abs(pruned - 0.8 * n) <= 1
    zeros = sum(int((l.weight == 0).sum()) for l in sp.pruned)
    assert zeros == pruned
    assert sp.verify() == {}
    expect = {l.name: feather_threshold(l.param.detach(), t) for l in sp.pruned}
    masks = sp.masks()
    sp.finalize()
    for l in sp.pruned:
        assert not parametrize.is_parametrized(l.module)
        assert type(l.module.weight) is nn.Parameter
        assert torch.equal(l.module.weight.detach(), expect[l.name])
        assert torch.equal(sp.masks()[l.name], masks[l.name])


def test_layer_scope_uses_each_layers_own_quantile():
    sp, _, _ = user_loop(convnet(), feather(0.7, scope="layer"), epochs=3)
    for l in sp.pruned:
        q = torch.quantile(l.param.detach().abs().reshape(-1), 0.7)
        assert sp.method.thresholds()[l.name] == float(q)
        pruned = int((~sp.masks()[l.name]).sum())
        assert abs(pruned - 0.7 * l.param.numel()) <= 1
    assert sp.verify() == {}


def test_channels_last_weights_give_the_same_threshold():
    a, b = convnet(), convnet().to(memory_format=torch.channels_last)
    sa = sparsegrain.sparsify_(a, feather(0.6, end=0), steps_per_epoch=1)
    sb = sparsegrain.sparsify_(b, feather(0.6, end=0), steps_per_epoch=1)
    assert sa.method.thresholds() == sb.method.thresholds()
    t = sb.method.thresholds()["0"]
    assert t == float(torch.quantile(all_abs(sa), 0.6))
    for layer in sb.pruned:
        assert torch.equal(sb.masks()[layer.name], layer.param.detach().abs() > t)
        assert torch.equal(sa.masks()[layer.name], sb.masks()[layer.name])


def test_state_dict_round_trip_resumes_exactly():
    from sparsegrain.core.state import flatten_state, unflatten_state

    model = convnet()
    sp, opt, loader = user_loop(model, feather(0.8), epochs=1)
    tensors, rest = flatten_state(sp.state_dict())
    state = unflatten_state(tensors, rest)
    assert state["method"]["thresholds"] == sp.method.thresholds()

    again = convnet()
    opt2 = torch.optim.SGD(again.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sp2 = sparsegrain.sparsify_(again, feather(0.8), steps_per_epoch=4, optimizer=opt2, epochs=1)
    again.load_state_dict(model.state_dict())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # state_dict() shares tensors
    sp2.load_state_dict(state)
    assert sp2.steps == sp.steps and sp2.method.thresholds() == sp.method.thresholds()
    assert all(torch.equal(sp.masks()[k], sp2.masks()[k]) for k in sp.masks())
    x, y = loader[0]
    for m, o, s in ((model, opt, sp), (again, opt2, sp2)):
        loss = nn.functional.cross_entropy(m(x), y)
        o.zero_grad()
        loss.backward()
        o.step()
        s.step()
    assert sp2.method.thresholds() == sp.method.thresholds()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_resume_in_the_trainer_gives_identical_weights(tmp_path, crash_and_resume):
    import json

    import yaml

    from sparsegrain import cli

    recipe = {
        "model": {"name": "resnet_tiny"},
        "data": {
            "name": "synthetic",
            "batch_size": 64,
            "synthetic_train": 128,
            "synthetic_test": 64,
            "image_size": 8,
        },
        "train": {"epochs": 2, "lr": 0.05, "progress": False, "seed": 1, "threads": 1},
        "sparsity": {"method": "feather", "target": 0.9, "end": 1.5, "scope": "global"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli.main(["train", "--recipe", str(path), "--out", str(tmp_path / "ref")]) == 0
    crash_and_resume(tmp_path / "crashed", "--recipe", path)
    assert_same_files(tmp_path / "ref", tmp_path / "crashed")
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["feather"] == {"p": 3.0, "theta": 1.0, "ramp": [0.0, 1.5]}
    assert summary["violations"] == {}
    n = sum(r["params"] for r in summary["layers"] if r["structure"] != "dense")
    assert abs(summary["sparsity"] * n - 0.9 * n) <= 1
    rows = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["feather_s_t"] for r in rows] == [0.9 - 0.9 * (1 - 1 / 1.5) ** 3, 0.9]
    assert all(r["feather_threshold"] > 0 for r in rows)
