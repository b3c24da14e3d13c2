"""FLOPs (MACs) and the SCNN-like memory-reference model, counted by hand on tiny layers."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsegrain.analysis.accelerator import (
    MODEL_NOTE,
    SCNNConfig,
    channel_groups,
    format_refs,
    layer_refs,
    model_refs,
    tiles,
)
from sparsegrain.analysis.flops import (
    LayerGeometry,
    flops,
    format_flops,
    layer_weights,
    model_flops,
    profile,
    valid_taps,
)


def geom_of(module, shape, name="layer"):
    """The geometry ``profile`` gives one layer on a batch of ones of ``shape``."""
    (g,) = profile(nn.Sequential(OrderedDict([(name, module)])), torch.ones(shape))
    assert g.name == name
    return g


# -- flops ----------------------------------------------------------------------------------------


def test_flops_grouped_strided_conv_by_hand():
    conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2, bias=False)
    g = geom_of(conv, (1, 2, 5, 5))
    # Ho = (5 + 2 - 3) // 2 + 1 = 3
    assert (g.in_shape, g.out_shape, g.stride, g.padding, g.groups) == (
        (2, 5, 5), (4, 3, 3), (2, 2), (1, 1), 2
    )  # fmt: skip
    w = torch.zeros(4, 1, 3, 3)
    w[:, 0, 1, 1] = 1.0  # 4 centre taps
    w[0, 0, 0, 0] = 1.0  # one corner tap
    # rows[r] = #{ho in 0..2 : 0 <= 2*ho - 1 + r < 5} = [2, 3, 2]; cols the same
    assert valid_taps(g) == ([2, 3, 2], [2, 3, 2])
    assert flops(g, w) == {
        "dense": 4 * 1 * 3 * 3 * 3 * 3,  # K * C/g * R * S * Ho * Wo = 324
        "effective": 5 * 9,  # nnz * Ho * Wo
        "dense_valid": 4 * 1 * 7 * 7,  # K * C/g * sum(rows) * sum(cols)
        "effective_valid": 4 * 3 * 3 + 2 * 2,  # centre taps 9 outputs each, corner 4: 40
    }
    with pytest.raises(ValueError, match="expected: \\(4, 1, 3, 3\\)"):
        flops(g, torch.ones(4, 2, 3, 3))


def test_flops_linear_and_conv1d():
    g = geom_of(nn.Linear(3, 2), (4, 5, 3))  # 5 positions per example
    assert (g.kind, g.in_shape, g.out_shape) == ("linear", (3, 1, 5), (2, 1, 5))
    w = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    assert flops(g, w) == {"dense": 30, "effective": 10, "dense_valid": 30, "effective_valid": 10}
    g = geom_of(nn.Conv1d(2, 3, 3, padding=1), (1, 2, 6))
    assert (g.kind, g.weight_shape, g.out_shape, g.padding) == (
        "conv1d",
        (3, 2, 3),
        (3, 1, 6),
        (0, 1),
    )
    assert flops(g, torch.ones(3, 2, 3))["dense"] == 3 * 2 * 3 * 6  # 108
    # taps s=0 and s=2 miss one output each: (5 + 6 + 5) per kernel row, 6 kernels
    assert flops(g, torch.ones(3, 2, 3))["effective_valid"] == 6 * 16


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=4, padding="same"),
        dict(kernel_size=3, stride=2, padding=2, dilation=2),
        dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1), groups=2),
    ],
)
def test_effective_valid_matches_brute_force(kw):
    conv = nn.Conv2d(2, 4, bias=False, **kw)
    g = geom_of(conv, (1, 2, 7, 6))
    mask = torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    # Convolving an all-ones input with the 0/1 mask counts, at every output, the non-zero
    # weights that land on real input: the sum is the exact MAC count without padding taps.
    with torch.no_grad():
        conv.weight.copy_(mask.float())
        brute = conv(torch.ones(1, 2, 7, 6)).sum()
    assert flops(g, mask)["effective_valid"] == int(brute)


def test_profile_shapes_and_activation_density():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(2, 4, 3, stride=2, groups=2, bias=False),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[:, :, 1, 1] = 1.0  # identity on the centre: output = input
        model[2].weight.fill_(1.0)
    x = torch.zeros(2, 1, 6, 6)
    x[..., :3] = 1.0  # the left half non-zero
    model.train()
    geoms = profile(model, x)
    assert model.training and all(not m._forward_hooks for m in model.modules())
    assert [g.name for g in geoms] == ["0", "2", "4"]
    assert [g.in_shape for g in geoms] == [(1, 6, 6), (2, 6, 6), (16, 1, 1)]
    assert [g.out_shape for g in geoms] == [(2, 6, 6), (4, 2, 2), (3, 1, 1)]
    # conv1 sees x; conv2 sees ReLU(x) = x; every 3x3 window of conv2 touches a non-zero column
    assert [g.act_density for g in geoms] == [0.5, 0.5, 1.0]
    assert (geoms[1].stride, geoms[1].groups, geoms[1].kernel) == ((2, 2), 2, (3, 3))
    res = model_flops(geoms, layer_weights(model))
    dense = 2 * 9 * 36 + 4 * 9 * 4 + 48  # 648 + 144 + 48
    assert res["total"]["dense"] == dense
    assert res["total"]["effective"] == 2 * 36 + 144 + 48
    assert "MACs per example" in format_flops(res)
    with pytest.raises(ValueError, match="'4'"):
        model_flops(geoms, {"0": model[0].weight, "2": model[2].weight})


# -- accelerator ----------------------------------------------------------------------------------


def test_tiles_and_channel_groups():
    def g(ho, wo):
        return LayerGeometry("x", "conv2d", (1, 1, 1, 1), (1, ho, wo), (1, ho, wo))

    cfg = SCNNConfig()
    assert tiles(g(4, 4), cfg) == 16 and tiles(g(1, 1), cfg) == 1
    assert tiles(g(10, 3), cfg) == 5 * 3  # tiles of 2 x 1
    assert tiles(g(32, 32), cfg) == 64
    # K = 6 in 2 conv groups (3 each), Kc = 2: groups never cross a conv group
    assert channel_groups(6, 2, 2).tolist() == [0, 0, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="SCNNConfig.kc"):
        SCNNConfig(kc=0)


def _hand_layer():
    """Conv 2 -> 4, 3x3, pad 1 on 4x4; filters 0 and 1 in output group 0, 2 and 3 in group 1."""
    g = geom_of(nn.Conv2d(2, 4, 3, padding=1), (1, 2, 4, 4))
    m = torch.zeros(4, 2, 3, 3, dtype=torch.bool)
    m[0, 0] = True  # a full kernel: 9 non-zeros
    m[2, 1, 1, 1] = True  # one centre tap
    m[3, 1] = True  # a full kernel
    return g, m  # nnz = 19; filter 1 is empty


def test_layer_refs_by_hand():
    g, m = _hand_layer()
    cfg = SCNNConfig(pe_rows=2, pe_cols=2, kc=2)
    r = layer_refs(g, m, 0.5, cfg, "kernel")
    assert r["tiles"] == 4  # 4x4 plane in 2x2 tiles
    assert r["weight"] == 19 * 4
    assert r["weight_index"] == 3 * 4  # kept kernels (0,0), (2,1), (3,1), per tile
    # (output group, channel) pairs used: (0, c0) and (1, c1); 0.5 * 16 non-zeros each
    assert r["activation"] == 2 * 0.5 * 16 == r["activation_index"]
    # valid taps per kernel row/col [3, 4, 3]: a full kernel 10 * 10, the centre 4 * 4
    assert r["products"] == 0.5 * (100 + 16 + 100)  # 108
    assert r["accumulator"] == 2 * 108
    assert r["index"] == 12 + 16
    assert r["total"] == 76 + 28 + 16 + 216
    assert r["bits"] == 76 * 16 + 28 * 4 + 16 * 16 + 216 * 24
    assert r["array_cycles"] == 108 / (4 * 16)
    # One index per non-zero weight for fine (and with no structure); per filter / channel piece
    assert layer_refs(g, m, 0.5, cfg, "fine")["weight_index"] == 19 * 4
    assert layer_refs(g, m, 0.5, cfg)["weight_index"] == 19 * 4
    assert layer_refs(g, m, 0.5, cfg, "filter")["weight_index"] == 3 * 4
    assert layer_refs(g, m, 0.5, cfg, "channel")["weight_index"] == 2 * 4
    # act_density defaults to the profiled one (a batch of ones: 1.0)
    assert layer_refs(g, m, cfg=cfg)["activation"] == 2 * 16


def test_layer_refs_dense_and_channel_spanning_groups():
    g = geom_of(nn.Conv2d(3, 4, 1), (1, 3, 2, 2))
    cfg = SCNNConfig(kc=2)
    r = layer_refs(g, torch.ones(4, 3, 1, 1), 1.0, cfg, "channel")
    assert r["tiles"] == 4 and r["weight"] == 12 * 4
    assert r["weight_index"] == 3 * 2 * 4  # each channel spans 2 output groups, per tile
    assert r["activation"] == 3 * 4 * 2  # C * H * W * ceil(K / Kc)
    assert r["products"] == 12 * 4
    with pytest.raises(ValueError, match="window needs a kernel larger than 1x1"):
        layer_refs(g, torch.ones(4, 3, 1, 1), 1.0, cfg, "window")


def test_model_refs_totals_and_note():
    g, m = _hand_layer()
    fc = geom_of(nn.Linear(4, 2), (1, 4), "fc")
    cfg = SCNNConfig(pe_rows=2, pe_cols=2, kc=2)
    res = model_refs(
        [g, fc],
        {g.name: m, fc.name: torch.ones(2, 4)},
        {g.name: "kernel"},
        {g.name: 0.5},
        cfg,
    )
    one = layer_refs(g, m, 0.5, cfg, "kernel")
    two = layer_refs(fc, torch.ones(2, 4), 1.0, cfg)
    assert [r["structure"] for r in res["layers"]] == ["kernel", "none"]
    assert two["weight"] == 8 and two["activation"] == 4 and two["products"] == 8
    for k in ("weight", "index", "activation", "accumulator", "total"):
        assert res["total"][k] == one[k] + two[k]
    assert res["note"] == MODEL_NOTE and "OUR RECONSTRUCTION" in MODEL_NOTE
    assert MODEL_NOTE in format_refs(res)
    with pytest.raises(ValueError, match="no tensor"):
        model_refs([g], {}, cfg=cfg)
