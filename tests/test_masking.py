import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import sparsegrain
from sparsegrain.core.errors import ConfigError


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 0: first conv, excluded by default
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1),  # 2
        nn.ReLU(),
        nn.Conv2d(8, 8, 1),  # 4: 1x1
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),  # 7: classifier, excluded by default
    )


def batches(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 1, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g))
        for _ in range(n)
    ]


def campfire(**kw):
    cfg = {
        "method": "campfire",
        "structure": "fine",
        "target": 0.5,
        "start": 0,
        "end": 1,
        "frequency": 1,
    }
    cfg.update(kw)
    return cfg


def test_default_targets_skip_first_conv_and_classifier():
    model = net()
    sp = sparsegrain.sparsify_(model, campfire(), steps_per_epoch=2)
    rows = {r["name"]: r for r in sp.report()}
    assert list(rows) == ["0", "2", "4", "7"]
    assert rows["0"]["structure"] == "dense" and "excluded by default" in rows["0"]["note"]
    assert rows["7"]["structure"] == "dense"
    assert rows["2"]["structure"] == "fine" and rows["2"]["target"] == 0.5
    assert [l.name for l in sp.pruned] == ["2", "4"]


def test_explicit_empty_exclude_prunes_every_layer():
    sp = sparsegrain.sparsify_(net(), campfire(exclude=[]), steps_per_epoch=2)
    assert [l.name for l in sp.pruned] == ["0", "2", "4", "7"]


def test_include_types_and_overrides():
    cfg = campfire(
        exclude=[],
        types=["conv"],
        include=["2", "4"],
        overrides={"4": {"target": 0.25, "structure": "filter"}},
    )
    sp = sparsegrain.sparsify_(net(), cfg, steps_per_epoch=2)
    layers = {l.name: l for l in sp.pruned}
    assert list(layers) == ["2", "4"]
    assert layers["4"].target == 0.25 and layers["4"].structure.spec == "filter"
    assert [r["name"] for r in sp.report()] == ["0", "2", "4"]  # no Linear with types=[conv]


def test_structure_that_does_not_fit_is_refused_naming_the_layer():
    with pytest.raises(ValueError, match=r"layer '4' \[8, 8, 1, 1\]"):
        sparsegrain.sparsify_(net(), campfire(structure="window"), steps_per_epoch=2)


def test_fallback_dense_and_fallback_structure():
    sp = sparsegrain.sparsify_(
        net(), campfire(structure="window", fallback="dense"), steps_per_epoch=2
    )
    row = {r["name"]: r for r in sp.report()}["4"]
    assert row["structure"] == "dense" and row["note"].startswith("left dense: window")
    sp = sparsegrain.sparsify_(
        net(), campfire(structure="window", fallback="filter"), steps_per_epoch=2
    )
    row = {r["name"]: r for r in sp.report()}["4"]
    assert row["structure"] == "filter" and row["note"].startswith("fallback filter")


def test_forward_sees_exact_zeros_and_mask_never_regrows():
    """Frozen mask + momentum + weight decay: pruned weights and their momentum stay exactly 0."""
    model = net()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True
    )
    sp = sparsegrain.sparsify_(model, campfire(end=0.5), steps_per_epoch=2, optimizer=opt)
    loss_fn = nn.CrossEntropyLoss()
    for i, (x, y) in enumerate(batches(8)):
        loss = loss_fn(model(x), y) + sp.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
        if i == 0:
            frozen = {k: v.clone() for k, v in sp.masks().items()}
    assert sp.method.frozen
    for layer in sp.pruned:
        keep = frozen[layer.name]
        assert torch.equal(sp.masks()[layer.name], keep)
        assert torch.all(layer.param[~keep] == 0)
        assert torch.all(layer.weight[~keep] == 0)
        assert torch.all(opt.state[layer.param]["momentum_buffer"][~keep] == 0)
        assert int((~keep).sum()) == layer.param.numel() // 2  # fine at 0.5: exactly half


def test_finalize_gives_a_plain_module_that_loads_into_a_fresh_copy():
    model = net()
    sp = sparsegrain.sparsify_(model, campfire(start=0, end=0), steps_per_epoch=1)
    sp.step()
    masks = sp.masks()
    out = sp.finalize()
    assert out is model
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    fresh = net()
    fresh.load_state_dict(model.state_dict())  # strict: same keys as the plain architecture
    assert torch.equal(fresh[2].weight == 0, ~masks["2"])
    x = torch.randn(2, 1, 6, 6)
    assert torch.equal(fresh(x), model(x))


def test_finalize_without_handle():
    model = net()
    sparsegrain.sparsify_(model, campfire(), steps_per_epoch=1).step()
    sparsegrain.finalize_(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert set(model.state_dict()) == set(net().state_dict())


def test_state_dict_round_trip_restores_masks_exactly():
    model = net()
    sp = sparsegrain.sparsify_(model, campfire(end=2), steps_per_epoch=2)
    for _ in range(3):
        sp.step()
    state = sp.state_dict()
    model2 = net()
    sp2 = sparsegrain.sparsify_(model2, campfire(end=2), steps_per_epoch=2)
    model2.load_state_dict(model.state_dict())  # parametrized keys on both sides
    sp2.load_state_dict(state)
    assert torch.equal(model2[2].weight, model[2].weight)
    assert sp2.steps == 3 and sp2.method.updates == sp.method.updates
    for name, m in sp.masks().items():
        assert torch.equal(sp2.masks()[name], m)


def test_recipe_sources_agree(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sparsity:\n  method: campfire\n  target: 0.5\n  end: 1\n")
    a = sparsegrain.sparsify_(net(), str(path), steps_per_epoch=1)
    b = sparsegrain.sparsify_(
        net(), {"sparsity": {"method": "campfire", "target": 0.5, "end": 1}}, steps_per_epoch=1
    )
    c = sparsegrain.sparsify_(
        net(), {"method": "campfire", "target": 0.5, "end": 1}, steps_per_epoch=1
    )
    assert a.cfg == b.cfg == c.cfg
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        sparsegrain.sparsify_(net(), c.cfg, steps_per_epoch=0)


def test_baked_zeros_are_positive():
    model = net()
    sp = sparsegrain.sparsify_(model, campfire(start=0, end=0), steps_per_epoch=1)
    sp.step()
    sp.finalize()
    w = model[2].weight.detach()
    zeros = w == 0
    assert zeros.any()
    assert not torch.signbit(w[zeros]).any()
