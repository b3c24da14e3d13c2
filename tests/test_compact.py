"""Compaction: hand-pruned tiny models with exact channel and parameter counts, the coupled
residual stream, constants of zeroed filters (BN shift), untraceable models, the zoo, the file
round trip without pickle."""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsegrain import sparsify_
from sparsegrain.deploy.compact import compact, load_compact, save_compact
from sparsegrain.graph import RUN
from sparsegrain.models import create_model

TOL = 1e-5


def tiny_resnet():
    torch.manual_seed(0)
    return create_model("resnet_tiny", num_classes=10, in_channels=3).eval()


def x12(n=4):
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def params(m):
    return sum(p.numel() for p in m.parameters())


def zero_filters(conv, idx):
    with torch.no_grad():
        conv.weight[idx] = 0


def test_block_intermediate_channels_go(capsys):
    m = tiny_resnet()
    zero_filters(m.layer1[0].conv1, [1, 3])  # BN at init: shift 0, so the channels are exactly 0
    r = compact(m, x12())
    c = r.model.layer1[0]
    assert c.conv1.weight.shape == (2, 4, 3, 3) and c.bn1.num_features == 2
    assert c.conv2.weight.shape == (4, 2, 3, 3)
    assert r.layers["layer1.0.conv1"].out == [0, 2] and r.layers["layer1.0.conv2"].inp == [0, 2]
    assert r.params_after == r.params_before - (2 * 4 * 9 + 2 * 2 + 4 * 2 * 9)
    assert r.params_after == params(r.model)
    assert r.max_abs_diff <= TOL
    assert set(r.layers) == {"layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"}
    print(f"max abs diff {r.max_abs_diff:.3g}")
    assert m.layer1[0].conv1.weight.shape == (4, 4, 3, 3)  # the original is untouched


def test_residual_stream_needs_every_writer():
    m = tiny_resnet()
    zero_filters(m.conv1, [0])  # the stem writes channel 0 of the stage-1 stream ...
    r = compact(m, x12())
    assert "conv1" not in r.layers and "layer1.0.conv2" not in r.layers  # ... but not alone
    assert r.params_after == r.params_before

    zero_filters(m.layer1[0].conv2, [0])  # now both writers agree: the stream channel is 0
    r = compact(m, x12())
    stream = ["conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2"]
    assert all(r.layers[n].out == [1, 2, 3] for n in stream)
    readers = ["layer1.0.conv1", "layer2.0.conv1", "layer2.0.downsample.0"]
    assert all(r.layers[n].inp == [1, 2, 3] for n in readers)
    removed = 3 * 9 + 2 + 4 * 9 + 4 * 9 + 2 + 8 * 9 + 8  # filters, BN pairs, reader columns
    assert r.params_after == r.params_before - removed
    assert r.max_abs_diff <= TOL


def test_readers_that_ignore_a_channel_remove_it():
    """Input-channel pruning: nobody reads channel 2 of layer1.0's output, so its (non-zero)
    filter in conv1 goes."""
    m = tiny_resnet()
    with torch.no_grad():
        m.layer1[0].conv2.weight[:, 2] = 0
    r = compact(m, x12())
    assert r.layers["layer1.0.conv1"].out == [0, 1, 3]
    assert r.params_after == r.params_before - (4 * 9 + 2 + 4 * 9)
    assert r.max_abs_diff <= TOL


@pytest.mark.parametrize("beta, removed", [(-0.5, True), (0.5, False)])
def test_bn_shift_before_a_padded_conv(beta, removed):
    """A zeroed filter's channel is BN's shift; after ReLU it is 0 (removed) or a positive
    constant that a 3x3 zero-padded conv reads (kept: no bias is exact at the border)."""
    m = tiny_resnet()
    zero_filters(m.layer1[0].conv1, [2])
    with torch.no_grad():
        m.layer1[0].bn1.bias[2] = beta
    r = compact(m, x12())
    assert ("layer1.0.conv1" in r.layers) == removed
    if not removed:
        assert "read through zero padding" in " ".join(r.notes["layer1.0.conv1"])
    assert r.max_abs_diff <= TOL


def test_constant_folds_into_linear_bias():
    torch.manual_seed(0)
    m = create_model("vgg_tiny", num_classes=10, in_channels=3).eval()
    zero_filters(m.features[7], [1, 5])  # last conv; its BN shift 0.3 survives the ReLU
    with torch.no_grad():
        m.features[8].bias[[1, 5]] = torch.tensor([0.3, -0.2])
    r = compact(m, x12())
    assert r.model.features[7].out_channels == 6 and r.model.classifier.in_features == 6
    assert not torch.equal(r.model.classifier.bias, m.classifier.bias)  # 0.3 * W folded in
    assert r.params_after == r.params_before - (2 * 8 * 9 + 2 * 2 + 10 * 2)
    assert r.max_abs_diff <= TOL


def test_constant_folds_into_next_bn_mean_through_1x1():
    torch.manual_seed(0)
    m = create_model("resnet50", num_classes=10, in_channels=3, width=4, small_input=True)
    m.eval()
    b = m.layer1[0]
    zero_filters(b.conv2, [0, 3])
    with torch.no_grad():
        b.bn2.bias[[0, 3]] = torch.tensor([0.7, 0.4])  # relu -> constants read by 1x1 conv3
    r = compact(m, torch.randn(2, 3, 16, 16))
    assert r.model.layer1[0].conv2.out_channels == 2 and r.model.layer1[0].conv3.in_channels == 2
    assert r.model.layer1[0].conv3.bias is None  # folded into bn3's running mean instead
    assert not torch.equal(r.model.layer1[0].bn3.running_mean, b.bn3.running_mean)
    assert r.max_abs_diff <= TOL


def test_tiny_vgg_exact_counts():
    torch.manual_seed(0)
    m = create_model("vgg_tiny", num_classes=10, in_channels=3).eval()
    zero_filters(m.features[0], [0])  # conv 3->4
    zero_filters(m.features[4], [0, 1, 2])  # conv 4->8
    r = compact(m, x12())
    shapes = [tuple(r.model.features[i].weight.shape) for i in (0, 4, 7)]
    assert shapes == [(3, 3, 3, 3), (5, 3, 3, 3), (8, 5, 3, 3)]
    expected = 3 * 27 + 6 + 5 * 27 + 10 + 8 * 45 + 16 + 10 * 8 + 10
    assert r.params_after == expected == params(r.model)
    assert r.max_abs_diff <= TOL


def test_model_fx_cannot_trace_is_compacted_from_a_run():
    m = create_model("mlp_tiny", num_classes=10, in_channels=1)  # forward branches on x.shape
    with torch.no_grad():
        m.fc1.weight[:5] = 0
    x = torch.randn(2, 1, 28, 28)
    r = compact(m, x)
    assert r.traced and r.tracer == RUN
    assert (r.model.fc1.out_features, r.model.fc.in_features) == (27, 27)
    assert r.params_after == r.params_before - 5 * (784 + 1) - 5 * 10
    assert r.max_abs_diff <= TOL


def test_model_that_cannot_be_traced_at_all_is_left_alone_with_notes(monkeypatch):
    import sparsegrain.deploy.compact.core as core

    def fail(model, example_input):
        raise RuntimeError("no trace\nsecond line")

    monkeypatch.setattr(core, "channel_graph", fail)
    m = create_model("mlp_tiny", num_classes=10, in_channels=1)
    x = torch.randn(2, 1, 28, 28)
    r = compact(m, x)
    assert not r.traced and r.layers == {} and r.params_after == r.params_before
    assert set(r.notes) == {"fc1", "fc"}
    assert r.notes["fc1"] == [
        "not compacted: the model could not be traced (RuntimeError: no trace)"
    ]
    assert torch.equal(r.model(x), m.eval()(x))


def test_grouped_convs_pin_their_channels():
    torch.manual_seed(0)
    m = create_model("convnet_tiny", num_classes=10, in_channels=3).eval()
    zero_filters(m.conv1, [0])
    zero_filters(m.pointwise, [0, 1])
    r = compact(m, torch.randn(2, 3, 16, 16))
    assert "conv1" not in r.layers and "grouped conv" in r.notes["conv1"][0]
    assert r.model.pointwise.out_channels == 14
    assert r.max_abs_diff <= TOL


ZOO = [
    ("resnet20", {"width": 4}, 16),
    ("resnet18", {"width": 4, "small_input": True}, 16),
    ("resnet50", {"width": 4, "small_input": True}, 16),
    ("resnet50_v1", {"width": 4}, 64),
    ("vgg11", {"width": 4}, 32),
]


@pytest.mark.parametrize("name, opts, size", ZOO, ids=[z[0] for z in ZOO])
@pytest.mark.parametrize("structure", ["filter", "channel"])
def test_zoo_compacts_exactly(name, opts, size, structure):
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, in_channels=3, **opts)
    randomize_bn(m)
    sparsify_(
        m, {"method": "oneshot", "structure": structure, "target": 0.5}, steps_per_epoch=1
    ).finalize()
    r = compact(m, torch.randn(2, 3, size, size))
    assert r.traced and r.params_after < r.params_before and r.macs_after < r.macs_before
    assert r.max_abs_diff <= TOL * 10  # summation order changes over up to ~50 layers


@settings(max_examples=12, deadline=None)
@given(
    filters=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 15)), max_size=12),
    seed=st.integers(0, 100),
)
def test_random_pruning_is_exact(filters, seed):
    m = tiny_resnet()
    randomize_bn(m, seed)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    for i, k in filters:
        zero_filters(convs[i], [k % convs[i].out_channels])
    with torch.no_grad():  # some shifts <= 0: those channels vanish after the ReLU
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d) and seed % 2:
                mod.bias.abs_().neg_()
    r = compact(m, x12())
    assert r.max_abs_diff <= TOL and r.params_after == params(r.model) <= r.params_before


def test_save_load_without_pickle(tmp_path, monkeypatch):
    m = tiny_resnet()
    zero_filters(m.layer1[0].conv1, [0, 1])
    zero_filters(m.layer2[0].conv1, [3])
    x = x12()
    r = compact(m, x)
    spec = {"name": "resnet_tiny", "num_classes": 10, "in_channels": 3}
    save_compact(tmp_path / "c.safetensors", r, spec)

    def no_pickle(*a, **k):
        raise AssertionError("torch.load used")

    monkeypatch.setattr(torch, "load", no_pickle)
    back, meta = load_compact(tmp_path / "c.safetensors")
    assert meta["layers"]["layer1.0.conv1"]["out"] == [2, 3]
    assert params(back) == r.params_after
    with torch.no_grad():
        assert torch.equal(back(x), r.model(x))
    fresh = create_model("resnet_tiny", num_classes=10, in_channels=3)  # a given instance
    back2, _ = load_compact(tmp_path / "c.safetensors", model=fresh)
    with torch.no_grad():
        assert torch.equal(back2(x), r.model(x))


class CatSE(nn.Module):
    """A concatenation and a squeeze-excitation product."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.c = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.se = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.c(torch.cat([self.a(x), self.b(x)], 1))))
        y = y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def test_custom_model_cat_and_se_compact():
    torch.manual_seed(0)
    m = CatSE().eval()
    zero_filters(m.a, [0])  # channel 0 of the cat: c's input channel 0 goes
    zero_filters(m.b, [2])  # channel 4 + 2 = 6 of the cat
    zero_filters(m.c, [1, 4])  # BN shift 0 -> zero channels, through the SE product
    r = compact(m, torch.randn(2, 3, 8, 8))
    assert r.layers["a"].out == [1, 2, 3] and r.layers["b"].out == [0, 1, 3]
    assert r.layers["c"].inp == [1, 2, 3, 4, 5, 7] and r.model.c.weight.shape[1] == 6
    assert r.layers["c"].out == [0, 2, 3, 5] and r.layers["se"].out == [0, 2, 3, 5]
    assert r.layers["se"].inp == [0, 2, 3, 5] and r.layers["fc"].inp == [0, 2, 3, 5]
    assert r.max_abs_diff <= TOL
