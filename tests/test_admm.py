import itertools
import json
import math

import pytest
import torch
import yaml
from conftest import assert_same_files, tiny_recipe
from conftest import train_cli as train
from torch import nn

import sparsegrain
from sparsegrain.core.errors import ConfigError
from sparsegrain.core.io import load_tensors
from sparsegrain.core.schedules import lr_at
from sparsegrain.core.state import flatten_state, unflatten_state
from sparsegrain.methods.admm import projection
from sparsegrain.recipe.load import load_recipe
from sparsegrain.structures import parse_structure, shape_4d
from sparsegrain.train.loop import lr_for


def admm_cfg(**kw):
    cfg = {"method": "admm", "structure": "filter", "target": 0.5, "exclude": []}
    cfg.update(kw)
    return cfg


def linear_model(*weights):
    """A stack of bias-free Linear layers with the given (K, C) weights."""
    layers = []
    for w in weights:
        w = torch.tensor(w, dtype=torch.float32)
        layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(w)
        layers.append(layer)
    return nn.Sequential(*layers)


def convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 3)
    )


# -- the projection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "structure, shape",
    [
        ("fine", (3, 2, 1, 2)),
        ("filter", (5, 2, 2, 1)),
        ("channel", (2, 5, 1, 2)),
        ("shape", (2, 2, 2, 2)),
    ],
)
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("seed", [0, 1])
def test_projection_is_the_euclidean_projection(structure, shape, sparsity, seed):
    """Brute force: of every mask keeping the same number of groups, the projection is nearest."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    st = parse_structure(structure)
    layer = type("L", (), {"structure": st})()
    groups = st.num_groups(shape)
    keep = st.keep_per_domain(shape, sparsity)
    best, best_d = None, math.inf
    for kept in itertools.combinations(range(groups), keep):
        g = torch.zeros(1, groups, dtype=torch.bool)
        g[0, list(kept)] = True
        cand = w * st.expand(g, shape_4d(shape))
        d = float((w - cand).pow(2).sum())
        if d < best_d:
            best, best_d = cand, d
    assert torch.equal(projection(w, layer, sparsity), best)


# -- Z / U updates, penalty, rho -----------------------------------------------------------------


def test_one_update_sets_z_to_the_projection_of_w_plus_u_and_u_to_u_plus_w_minus_z():
    model = linear_model([[1.0, 2.0, 2.0], [0.0, 3.0, 0.0]])
    sp = sparsegrain.sparsify_(model, admm_cfg(), steps_per_epoch=1)
    m = sp.method
    # rows (filters) of W have equal L2 norms 3 and 3: Pi(W) keeps the first (ties: lower index)
    assert torch.equal(m.Z["0"], torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(m.U["0"], torch.zeros(2, 3))
    m.U["0"] = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    row = m.update()
    # W + U has row norms 3 and 3.5: Z keeps the second row of W + U
    assert torch.equal(m.Z["0"], torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.5, 0.0]]))
    assert torch.equal(m.U["0"], torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]]))
    assert row["period"] == m.periods == 1
    assert row["residual"] == pytest.approx(math.sqrt(9.25 / 18.0))
    assert row["layers"] == {"0": pytest.approx(math.sqrt(9.25 / 18.0))}
    assert m.history == [row]


def test_fine_update_on_hand_tensors():
    model = linear_model([[4.0, -1.0], [0.5, -3.0]])
    sp = sparsegrain.sparsify_(model, admm_cfg(structure="fine"), steps_per_epoch=1)
    m = sp.method
    assert torch.equal(m.Z["0"], torch.tensor([[4.0, 0.0], [0.0, -3.0]]))
    m.U["0"] = torch.tensor([[-3.5, 1.0], [2.0, 0.0]])  # W + U = [[0.5, 0], [2.5, -3]]
    m.update()
    assert torch.equal(m.Z["0"], torch.tensor([[0.0, 0.0], [2.5, -3.0]]))
    assert torch.equal(m.U["0"], torch.tensor([[0.5, 0.0], [0.0, 0.0]]))


def test_penalty_value_and_gradient():
    model = linear_model([[1.0, 2.0], [3.0, -1.0]], [[2.0, 0.0], [1.0, 1.0]])
    sp = sparsegrain.sparsify_(model, admm_cfg(structure="fine", rho=0.25), steps_per_epoch=1)
    m = sp.method
    m.Z = {"0": torch.tensor([[0.0, 2.0], [3.0, 0.0]]), "1": torch.tensor([[2.0, 0.0], [0.0, 1.0]])}
    m.U = {
        "0": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "1": torch.tensor([[0.0, 1.0], [-1.0, 0.0]]),
    }
    # W - Z + U: [[2, 0], [0, 0]] and [[0, 1], [0, 0]] -> squared norms 4 and 1
    value = sp.penalty()
    assert float(value.detach()) == 0.125 * (4.0 + 1.0)
    value.backward()
    assert torch.equal(sp.pruned[0].param.grad, 0.25 * torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    assert torch.equal(sp.pruned[1].param.grad, 0.25 * torch.tensor([[0.0, 1.0], [0.0, 0.0]]))


def test_rho_grows_per_update_up_to_rho_max():
    model = linear_model([[1.0, 2.0], [3.0, -1.0]])
    cfg = admm_cfg(rho=0.25, rho_growth=2.0, rho_max=1.5, admm_epochs=1, admm_periods=5)
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=2)
    for _ in range(8):
        sp.step()
    assert [row["rho"] for row in sp.method.history] == [0.25, 0.5, 1.0, 1.5]
    assert sp.method.rho == 1.5 and sp.method.periods == 4 and not sp.method.hard_pruned
    assert [row["epoch"] for row in sp.method.history] == [1.0, 2.0, 3.0, 4.0]


def test_constant_rho_by_default():
    sp = sparsegrain.sparsify_(
        linear_model([[1.0, 2.0]]), admm_cfg(structure="fine"), steps_per_epoch=1
    )
    sp.method.update()
    sp.method.update()
    assert sp.method.rho == 1e-3 and [r["rho"] for r in sp.method.history] == [1e-3, 1e-3]


# -- the LR clock --------------------------------------------------------------------------------


def test_lr_clock_restarts_every_period_then_runs_over_retraining():
    recipe = load_recipe(
        {
            "train": {"epochs": 10, "lr": 0.1, "schedule": "cosine"},
            "sparsity": admm_cfg(admm_epochs=2, admm_periods=3),
        }
    )
    sp = sparsegrain.sparsify_(convnet(), recipe, steps_per_epoch=4, epochs=10)
    clock = sp.method.lr_clock
    assert [clock(t) for t in (0, 1.5, 2, 3.25, 5.5)] == [
        (0, 2.0),
        (1.5, 2.0),
        (0, 2.0),
        (1.25, 2.0),
        (1.5, 2.0),
    ]
    assert [clock(t) for t in (6, 8, 10)] == [(0, 4.0), (2, 4.0), (4, 4.0)]
    lrs = [lr_for(recipe, t, sp) for t in (0, 1, 2, 3, 4, 5, 6, 8, 10)]
    assert lrs == [0.1, 0.05, 0.1, 0.05, 0.1, 0.05, 0.1, 0.05, 0.0]
    # other methods and a missing handle keep the run's schedule
    assert lr_for(recipe, 5.0) == lr_at(5.0, base_lr=0.1, epochs=10) == 0.05
    dense = sparsegrain.sparsify_(convnet(), {"method": "dense"}, steps_per_epoch=4, epochs=10)
    assert lr_for(recipe, 5.0, dense) == 0.05


def test_authors_step_schedule_within_each_period():
    recipe = load_recipe(
        {
            "train": {"epochs": 8, "lr": 0.1, "schedule": "step", "step_size": 1, "gamma": 0.1},
            "sparsity": admm_cfg(admm_epochs=3, admm_periods=2),
        }
    )
    sp = sparsegrain.sparsify_(convnet(), recipe, steps_per_epoch=2, epochs=8)
    lrs = [lr_for(recipe, t, sp) for t in range(8)]
    a, b, c = 0.1, 0.1 * 0.1, 0.1 * 0.1**2
    assert lrs == [a, b, c, a, b, c, a, b]


# -- hard prune and retraining -------------------------------------------------------------------


def test_hard_prune_clears_the_optimizer_and_masks_stay_fixed():
    model = convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    cfg = admm_cfg(structure="channel", rho=0.1, admm_epochs=1, admm_periods=2)
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=3, optimizer=opt, epochs=4)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 2, 5, 5, generator=gen), torch.randint(0, 3, (8,), generator=gen)

    def train_step():
        opt.zero_grad()
        (nn.functional.cross_entropy(model(x), y) + sp.penalty()).backward()
        opt.step()

    for _ in range(5):
        train_step()
        sp.step()
    assert sp.method.periods == 1 and not sp.method.hard_pruned
    assert all(bool(m.all()) for m in sp.masks().values())
    assert len(opt.state) > 0
    train_step()
    before = {layer.name: layer.param.detach().clone() for layer in sp.pruned}
    sp.step()  # step 6 = epoch 2: second update, then the hard prune
    assert sp.method.hard_pruned and sp.method.periods == 2
    assert len(opt.state) == 0
    st = parse_structure("channel")
    masks = sp.masks()
    for layer in sp.pruned:
        expect = st.mask(before[layer.name], 0.5, score="l2")
        assert torch.equal(masks[layer.name], expect)
        assert float((~expect).float().mean()) == 0.5
    assert sp.penalty() == 0.0
    for _ in range(6):
        train_step()
        sp.step()
    assert len(opt.state) > 0
    for layer in sp.pruned:
        mask = masks[layer.name]
        assert torch.equal(sp.masks()[layer.name], mask)
        assert torch.all(layer.param.detach()[~mask] == 0)
        assert torch.all(opt.state[layer.param]["momentum_buffer"][~mask] == 0)
    sp.finalize()
    for layer in sp.pruned:
        assert torch.all(layer.module.weight[~masks[layer.name]] == 0)
    assert sp.method.summary_extra()["admm"]["prune_epoch"] == 2


def test_finalize_hard_prunes_a_run_that_stopped_early():
    sp = sparsegrain.sparsify_(convnet(), admm_cfg(admm_epochs=5), steps_per_epoch=2)
    sp.step()
    sp.finalize()
    assert sp.method.hard_pruned
    # filters pruned: 2 of 4, 2 of 4, and 2 of the Linear's 3 rows (round half to even)
    masks = list(sp.masks().values())
    assert [int((~m).all(dim=tuple(range(1, m.ndim))).sum()) for m in masks] == [2, 2, 2]
    assert [int((~m).sum()) for m in masks] == [2 * 18, 2 * 36, 2 * 4]


def test_zero_periods_prunes_at_attach():
    sp = sparsegrain.sparsify_(convnet(), admm_cfg(admm_periods=0), steps_per_epoch=2, epochs=2)
    assert sp.method.hard_pruned and sp.method.history == []
    assert sp.method.lr_clock(0.5) == (0.5, 2.0)


def test_global_scope_projects_onto_one_budget():
    model = linear_model([[5.0, -1.0, 0.5], [2.0, 0.1, -4.0]], [[-3.0, 0.2], [0.3, 6.0]])
    sp = sparsegrain.sparsify_(model, admm_cfg(structure="fine", scope="global"), steps_per_epoch=1)
    z = sp.method.Z
    # 10 weights, keep 5: 6, 5, -4, -3, 2 (largest |w| over both layers)
    assert torch.equal(z["0"], torch.tensor([[5.0, 0.0, 0.0], [2.0, 0.0, -4.0]]))
    assert torch.equal(z["1"], torch.tensor([[-3.0, 0.0], [0.0, 6.0]]))


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"rho": 0}, "sparsity.rho: must be in (0, inf]"),
        ({"rho_growth": 0.5}, "sparsity.rho_growth: must be in [1, inf]"),
        ({"rho": 0.01, "rho_max": 0.001}, "sparsity.rho_max: must be in [0.01, inf]"),
        ({"admm_epochs": 0}, "sparsity.admm_epochs: must be in [1, inf]"),
        ({"admm_epochs": 1.5}, "sparsity.admm_epochs: expected an integer"),
        ({"rhoo": 1}, "did you mean 'rho'?"),
    ],
)
def test_bad_params_name_the_key(keys, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_recipe({"sparsity": admm_cfg(**keys)})


def test_admm_longer_than_the_run_is_refused():
    with pytest.raises(ConfigError, match="admm_epochs \\* admm_periods = 6 epochs"):
        sparsegrain.sparsify_(convnet(), admm_cfg(admm_epochs=3), steps_per_epoch=2, epochs=5)


# -- state ---------------------------------------------------------------------------------------


def round_trip(sp, model_fn, cfg, **kw):
    tensors, rest = flatten_state(sp.state_dict())
    state = unflatten_state(
        {k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(rest))
    )
    other = sparsegrain.sparsify_(model_fn(), cfg, **kw)
    other.load_state_dict(state)
    return other


@pytest.mark.parametrize("steps", [3, 7])  # mid-ADMM, and after the hard prune
def test_state_dict_round_trip(steps):
    cfg = admm_cfg(structure="shape", rho=0.5, rho_growth=1.3, admm_epochs=1, admm_periods=2)
    model = convnet()
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=2, epochs=4)
    for _ in range(steps):
        with torch.no_grad():
            for layer in sp.pruned:
                layer.param.add_(0.01 * torch.randn_like(layer.param))
        sp.step()
    other = round_trip(sp, convnet, cfg, steps_per_epoch=2, epochs=4)
    a, b = sp.method, other.method
    assert (b.rho, b.periods, b.hard_pruned) == (a.rho, a.periods, a.hard_pruned)
    assert b.history == a.history and len(a.history) == min(steps // 2, 2)
    assert a.Z.keys() == b.Z.keys() and a.U.keys() == b.U.keys()
    assert all(torch.equal(a.Z[k], b.Z[k]) and torch.equal(a.U[k], b.U[k]) for k in a.Z)
    assert a.hard_pruned == (steps == 7) and (not a.Z) == a.hard_pruned
    assert all(torch.equal(sp.masks()[k], other.masks()[k]) for k in sp.masks())


# -- end to end with the built-in trainer --------------------------------------------------------

RECIPE = tiny_recipe(
    {"method": "dense"},
    epochs=1,
    seed=3,
    train_size=256,
    test_size=128,
    test_batch=128,
)

ADMM = {
    "method": "admm",
    "structure": "filter",
    "target": 0.5,
    "rho": 0.01,
    "rho_growth": 1.3,
    "admm_epochs": 1,
    "admm_periods": 2,
}


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("admm")
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    assert train("--recipe", recipe, "--out", tmp / "dense") == 0
    admm = tmp / "admm.yaml"
    admm.write_text(
        yaml.safe_dump({**RECIPE, "train": {**RECIPE["train"], "epochs": 3}, "sparsity": ADMM})
    )
    return tmp / "dense", admm


def test_dense_then_admm_from_init(tmp_path, dense_run):
    dense, recipe = dense_run
    out = tmp_path / "admm"
    assert train("--recipe", recipe, "--out", out, "--init", dense) == 0
    summary = json.loads((out / "summary.json").read_text())
    st = parse_structure("filter")
    pruned = [r for r in summary["layers"] if r["structure"] != "dense"]
    assert pruned
    for r in pruned:
        assert r["structure"] == "filter"
        assert r["achieved"] == st.achieved_sparsity(r["shape"], 0.5) == 0.5
    assert summary["sparsity"] == 0.5 and summary["violations"] == {}
    admm = summary["admm"]
    assert admm["periods"] == 2 and admm["hard_pruned"] and admm["prune_epoch"] == 2
    assert [h["period"] for h in admm["history"]] == [1, 2]
    assert [h["epoch"] for h in admm["history"]] == [1.0, 2.0]
    assert [h["rho"] for h in admm["history"]] == [0.01, 0.01 * 1.3]
    for h in admm["history"]:
        assert 0 < h["residual"] < 1
        assert set(h["layers"]) == {r["name"] for r in pruned}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # LR: restarted at epoch 1 (second period) and 2 (retraining over 1 epoch), ~0 at the end
    assert [r["lr"] for r in rows] == [0.05, 0.05, 0.0]
    assert [r["admm_residual"] for r in rows[:2]] == [h["residual"] for h in admm["history"]]
    weights, _ = load_tensors(out / "model.safetensors")
    masks, _ = load_tensors(out / "masks.safetensors")
    for name, m in masks.items():
        assert torch.all(weights[f"{name}.weight"][~m] == 0)


def test_admm_needs_init(tmp_path, dense_run, capsys):
    _, recipe = dense_run
    assert train("--recipe", recipe, "--out", tmp_path / "x") == 2
    assert "give --init" in capsys.readouterr().err


def test_admm_resume_mid_period_is_identical(tmp_path, dense_run, crash_and_resume):
    dense, recipe = dense_run
    ref = tmp_path / "ref"
    assert train("--recipe", recipe, "--out", ref, "--init", dense) == 0
    crashed = tmp_path / "crashed"
    crash_and_resume(crashed, "--recipe", recipe, "--init", dense)
    assert_same_files(ref, crashed)
    sa = json.loads((ref / "summary.json").read_text())["admm"]
    sb = json.loads((crashed / "summary.json").read_text())["admm"]
    assert sa == sb
