"""Coupled filters (sparsity.couple): the sets found by fx, one filter mask per set, the coupled
score, exact compaction of residual streams, and the notes and errors a user sees."""

import pytest
import torch
from conftest import first_step
from torch import nn

import sparsegrain
from sparsegrain.core.errors import ConfigError
from sparsegrain.deploy.compact import compact
from sparsegrain.models import create_model
from sparsegrain.recipe.config import SparsityConfig
from sparsegrain.sparsity.couple import channel_scores, find_sets
from sparsegrain.sparsity.masking import filters_kept

STAGES = [
    ["conv1", "layer1.0.conv2"],
    ["layer2.0.conv2", "layer2.0.downsample.0"],
    ["layer3.0.conv2", "layer3.0.downsample.0"],
]


def resnet(seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet_tiny", num_classes=10, in_channels=3)
    with torch.no_grad():  # BN biases > 0, as after training: a dead channel would pass ReLU
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.fill_(0.5)
    return model


def campfire(**kw):
    # the stem conv writes stage 1's stream: prune it too
    return first_step(**{"exclude": ["fc"], "couple": True, **kw})


def x12():
    return torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(7))


def trained(steps=6, **cfg):
    model = resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.01)
    sp = sparsegrain.sparsify_(
        model, campfire(**cfg), steps_per_epoch=2, optimizer=opt, example_inputs=x12()
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 12, 12, generator=g), torch.randint(0, 10, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
    return model, sp


def dead(mask):
    return set(int(k) for k in (~filters_kept(mask)).nonzero().flatten())


def resnet_tiny_params(internal, streams, in_ch=3, classes=10):
    """Parameters of resnet_tiny (width 4, one block per stage) with ``internal[i]`` channels
    kept inside block i and ``streams[i]`` on stage i's residual stream."""
    n = streams[0] * in_ch * 9 + 2 * streams[0]  # stem conv1 + bn1
    prev = streams[0]
    for i, s in enumerate(streams):
        c = internal[i]
        n += c * prev * 9 + 2 * c + s * c * 9 + 2 * s  # conv1, bn1, conv2, bn2
        if i > 0:
            n += s * prev + 2 * s  # 1x1 downsample conv + its BN
        prev = s
    return n + classes * streams[2] + classes  # fc


# -- the sets --------------------------------------------------------------------------------------


def test_sets_found_by_fx_on_resnet_tiny():
    assert [s for s, _ in find_sets(resnet(), x12())] == STAGES
    sp = sparsegrain.sparsify_(resnet(), campfire(), steps_per_epoch=2, example_inputs=x12())
    coupled = {l.name: list(l.coupled) for l in sp.pruned if l.coupled}
    assert coupled == {m: s for s in STAGES for m in s}
    notes = {r["name"]: r["note"] for r in sp.report()}
    assert notes["conv1"] == "coupled with: layer1.0.conv2"
    assert notes["layer2.0.downsample.0"] == "coupled with: layer2.0.conv2"
    assert notes["layer1.0.conv1"] == ""
    assert {r["name"]: r.get("coupled") for r in sp.report()}["layer1.0.conv2"] == STAGES[0]


def test_imagenet_resnet_sets_go_through_maxpool_and_block_chains():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_channels=3)
    assert [s for s, _ in find_sets(model, torch.randn(1, 3, 64, 64))] == [
        ["conv1", "layer1.0.conv2", "layer1.1.conv2"],
        ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"],
        ["layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2"],
        ["layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"],
    ]


def test_excluded_or_other_structure_member_uncouples_its_set():
    # Default exclusion leaves the stem dense: stage 1 is not coupled, stages 2 and 3 are.
    over = {"layer3.0.downsample.0": {"structure": "kernel"}}
    sp = sparsegrain.sparsify_(
        resnet(), campfire(exclude=None, overrides=over), steps_per_epoch=2, example_inputs=x12()
    )
    layers = {l.name: l for l in sp.layers}
    assert [n for n, l in layers.items() if l.coupled] == STAGES[1]
    notes = {r["name"]: r["note"] for r in sp.report()}
    assert notes["layer1.0.conv2"] == (
        "left dense: its filters are one channel with 'conv1', which is not pruned (excluded by "
        "default (first conv / classifier))"
    )
    assert notes["conv1"] == "excluded by default (first conv / classifier)"
    mixed = "not coupled: only 'filter' layers are coupled, the set has filter, kernel"
    assert notes["layer3.0.conv2"] == mixed
    assert notes["layer3.0.downsample.0"] == mixed


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(3, 4, 1, bias=False)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.a(x) + self.b(x)


def test_model_fx_cannot_trace_is_coupled_from_a_run():
    torch.manual_seed(0)
    model = Untraceable()
    cfg = {"method": "oneshot", "structure": "filter", "target": 0.5, "exclude": []}
    x = torch.randn(2, 3, 6, 6)
    sp = sparsegrain.sparsify_(model, {**cfg, "couple": True}, steps_per_epoch=1, example_inputs=x)
    assert sp.couple_note == "" and [l.coupled for l in sp.layers] == [("a", "b"), ("a", "b")]
    masks = sp.masks()
    assert filters_kept(masks["a"]).tolist() == filters_kept(masks["b"]).tolist()
    assert int(filters_kept(masks["a"]).sum()) == 2


def test_no_example_input_is_not_coupled_and_says_why():
    torch.manual_seed(0)
    model = Untraceable()
    cfg = {"method": "oneshot", "structure": "filter", "target": 0.5, "exclude": []}
    sp = sparsegrain.sparsify_(model, {**cfg, "couple": True}, steps_per_epoch=1)
    assert sp.couple_note == (
        "not coupled: no example input to trace the model with (pass example_inputs=)"
    )
    assert all(not l.coupled for l in sp.layers)
    for row in sp.report():
        assert sp.couple_note in row["note"]
    # Each layer keeps its own mask, as without couple.
    torch.manual_seed(0)
    plain = sparsegrain.sparsify_(Untraceable(), cfg, steps_per_epoch=1)
    assert {n: m.tolist() for n, m in plain.masks().items()} == {
        n: m.tolist() for n, m in sp.masks().items()
    }


# -- one mask per set ------------------------------------------------------------------------------


def test_members_share_one_mask_at_the_target():
    _, sp = trained()
    masks = sp.masks()
    for members in STAGES:
        keep = [filters_kept(masks[m]) for m in members]
        assert all(torch.equal(k, keep[0]) for k in keep)
        for m in members:
            assert torch.equal(masks[m], keep[0].reshape(-1, 1, 1, 1).expand_as(masks[m]))
    for row in sp.report():
        if row["structure"] == "filter":
            assert row["achieved"] == 0.5  # K in {4, 8, 16}: exactly half of the filters
    assert sp.verify() == {}


def test_set_target_is_the_size_weighted_mean():
    over = {"layer2.0.downsample.0": {"target": 0.25}}
    _, sp = trained(overrides=over)
    # conv2 (8, 8, 3, 3) = 576 weights at 0.5, downsample (8, 4, 1, 1) = 32 at 0.25.
    s = (576 * 0.5 + 32 * 0.25) / 608
    rows = {r["name"]: r for r in sp.report()}
    for m in STAGES[1]:
        assert abs(rows[m]["achieved"] - s) <= 1 / 8
        assert rows[m]["achieved"] == 0.5  # 8 - round(8 s) = 4 kept
    assert torch.equal(
        filters_kept(sp.masks()["layer2.0.conv2"]),
        filters_kept(sp.masks()["layer2.0.downsample.0"]),
    )


# -- compaction ------------------------------------------------------------------------------------


@pytest.mark.parametrize("couple", [True, False])
def test_compaction_removes_the_stream_channels(couple):
    model, sp = trained(couple=couple)
    masks = sp.masks()
    sp.finalize()
    model.eval()
    r = compact(model, x12())
    internal = [w - len(dead(masks[f"layer{i}.0.conv1"])) for i, w in ((1, 4), (2, 8), (3, 16))]
    assert internal == [2, 4, 8]
    streams = [
        w - len(set.intersection(*(dead(masks[m]) for m in members)))
        for w, members in zip((4, 8, 16), STAGES)
    ]
    if couple:
        assert streams == [2, 4, 8]  # every dropped filter is a removed stream channel
    else:
        assert sum(streams) > 2 + 4 + 8  # writers disagree: most stream channels stay
    assert r.params_after == resnet_tiny_params(internal, streams)
    assert r.params_after == sum(p.numel() for p in r.model.parameters())
    assert r.max_abs_diff < 1e-5
    with torch.no_grad():
        assert float((r.model(x12()) - model(x12())).abs().max()) < 1e-5


# -- the coupled score -----------------------------------------------------------------------------


class TwoBranch(nn.Module):
    """``bn(a(x)) + relu(b(x))``: a 1x1 conv (E = 2) and a 3x3 conv (E = 18) write one tensor."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.b = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(
                torch.tensor([[1.0, 3.0], [3.0, -3.0], [0.5, 0.5]]).reshape(3, 2, 1, 1)
            )
            self.b.weight.copy_(
                torch.tensor([2.0, 0.1, 0.2]).reshape(3, 1, 1, 1).expand(3, 2, 3, 3)
            )

    def forward(self, x):
        return self.bn(self.a(x)) + torch.relu(self.b(x))


@pytest.mark.parametrize(
    "score, expected",
    [
        # l1 / E: mean |w| of each filter, summed over a and b
        ("l1", [(1 + 3) / 2 + 2.0, (3 + 3) / 2 + 0.1, (0.5 + 0.5) / 2 + 0.2]),
        # l2 / sqrt(E): RMS of each filter, summed
        ("l2", [(10 / 2) ** 0.5 + 2.0, 3.0 + 0.1, 0.5 + 0.2]),
    ],
)
def test_coupled_score_by_hand(score, expected):
    model = TwoBranch()
    cfg = {"method": "oneshot", "structure": "filter", "target": 1 / 3, "exclude": []}
    sp = sparsegrain.sparsify_(
        model,
        {**cfg, "score": score, "couple": True},
        steps_per_epoch=1,
        example_inputs=torch.randn(1, 2, 4, 4),
    )
    assert [l.coupled for l in sp.pruned] == [("a", "b"), ("a", "b")]
    fresh = TwoBranch()  # the pruned model's channel 2 is zero now
    weights = {"a": fresh.a.weight.detach(), "b": fresh.b.weight.detach()}
    got = channel_scores(sp.pruned, weights)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64))
    # Keep 2 of 3: channels 0 and 1 (scores 4.0, 3.1 vs 0.7 under l1), in both layers; b alone
    # would have kept 0 and 2.
    masks = sp.masks()
    assert filters_kept(masks["a"]).tolist() == [True, True, False]
    assert filters_kept(masks["b"]).tolist() == [True, True, False]
    alone = sparsegrain.sparsify_(TwoBranch(), {**cfg, "score": score}, steps_per_epoch=1)
    assert filters_kept(alone.masks()["b"]).tolist() == [True, False, True]


# -- admm and config -------------------------------------------------------------------------------


def test_admm_projection_and_hard_prune_are_coupled():
    model = resnet()
    cfg = {"method": "admm", "structure": "filter", "target": 0.5, "exclude": ["fc"]}
    sp = sparsegrain.sparsify_(
        model,
        {**cfg, "couple": True, "admm_periods": 1},
        steps_per_epoch=1,
        example_inputs=x12(),
    )
    z = sp.method.Z
    for members in STAGES:
        kept = [(z[m].reshape(z[m].shape[0], -1) != 0).any(dim=1) for m in members]
        assert (
            all(torch.equal(k, kept[0]) for k in kept) and int(kept[0].sum()) == len(kept[0]) // 2
        )
    sp.method.hard_prune()
    masks = sp.masks()
    for members in STAGES:
        assert len({tuple(filters_kept(masks[m]).tolist()) for m in members}) == 1


def test_config_validates_and_round_trips():
    cfg = SparsityConfig.parse({"method": "oneshot", "structure": "filter", "couple": True})
    assert cfg.to_dict()["couple"] is True
    assert SparsityConfig.parse(cfg.to_dict()).couple is True
    assert SparsityConfig.parse({"method": "oneshot"}).couple is False
    with pytest.raises(ConfigError, match=r"sparsity.couple: expected true/false, got 'yes'"):
        SparsityConfig.parse({"method": "oneshot", "couple": "yes"})
    with pytest.raises(ConfigError, match=r"sparsity.couple: true is not allowed with method"):
        SparsityConfig.parse({"method": "feather", "target": 0.5, "couple": True})
