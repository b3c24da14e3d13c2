"""sparsify_ on every layer kind: Conv1d, grouped / depthwise / 1x1 / non-square / dilated Conv2d,
Linear; layer-wise and global selection."""

import pytest
import torch
from torch import nn

import sparsegrain
from sparsegrain.models import create_model
from sparsegrain.structures import parse_structure, verify


def prune_now(model, **cfg):
    base = {"method": "campfire", "start": 0, "end": 0, "frequency": 1, "exclude": []}
    sp = sparsegrain.sparsify_(model, {**base, **cfg}, steps_per_epoch=1)
    sp.step()  # epoch 1 >= end: final masks, frozen
    return sp


def test_conv1d_and_linear_fine_and_nm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 5), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4, 8))
    sp = prune_now(model, structure="nm:2:4", target=0.5)
    masks = sp.masks()
    assert masks["0"].shape == (8, 4, 5) and masks["3"].shape == (8, 32)
    # every group of 4 consecutive inputs of a row keeps exactly 2
    assert torch.equal(masks["0"].reshape(8, 5, 4).sum(-1), torch.full((8, 5), 2))
    assert torch.equal(masks["3"].reshape(8, 8, 4).sum(-1), torch.full((8, 8), 2))
    x = torch.randn(2, 4, 8)
    assert model(x).shape == (2, 8)


def test_convnet_tiny_odd_layers_with_fallback():
    model = create_model("convnet_tiny", num_classes=10, in_channels=1)
    sp = prune_now(model, structure="window", target=0.5, fallback="dense", types=["conv"])
    rows = {r["name"]: r for r in sp.report()}
    assert rows["pointwise"]["structure"] == "dense"
    assert rows["pointwise"]["note"] == "left dense: window needs a kernel larger than 1x1, got 1x1"
    for name in ("grouped", "depthwise", "conv1x3", "conv3x1", "dilated"):
        layer = next(l for l in sp.pruned if l.name == name)
        mask = sp.masks()[name]
        assert verify(mask, layer.structure, is_mask=True) == []
        r, s = mask.shape[2:]
        # 3 elements per kernel: round(0.5 * 3) = 2 pruned, 1 kept; 9 elements: 4 pruned
        kept = r * s - round(0.5 * r * s)
        assert torch.equal(mask.sum(dim=(2, 3)), torch.full(mask.shape[:2], kept))
        pruned = (mask.numel() // (r * s)) * (r * s - kept)
        assert rows[name]["achieved"] == pruned / mask.numel()


def test_global_scope_uses_one_threshold_for_fine():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 5))
    with torch.no_grad():
        model[1].weight.mul_(10)  # the second layer's weights are far larger: it keeps more
    sp = prune_now(model, structure="fine", target=0.5, scope="global")
    m = sp.masks()
    kept = int(m["0"].sum() + m["1"].sum())
    assert kept == 150  # half of 200 + 100
    w = torch.cat([model[0].weight.detach().flatten(), model[1].weight.detach().flatten()])
    thr = w.abs().sort(descending=True).values[149]
    assert torch.equal(m["0"], model[0].weight.detach().abs() >= thr)
    assert torch.equal(m["1"], model[1].weight.detach().abs() >= thr)
    assert int(m["1"].sum()) > int(m["0"].sum())  # the large layer keeps more


@pytest.mark.parametrize(
    "spec",
    [
        "fine",
        "vector",
        "kernel",
        "filter",
        "channel",
        "shape",
        "window",
        "kernel-quota",
        "combined",
        "nm:2:4",
        "block:2x4",
    ],
)
def test_every_structure_on_a_resnet(spec):
    model = create_model("resnet_tiny", num_classes=10, in_channels=1)
    sp = prune_now(model, structure=spec, target=0.5, fallback="fine", exclude=None)
    st = parse_structure(spec)
    for layer in sp.pruned:
        mask = sp.masks()[layer.name]
        assert verify(mask, layer.structure, is_mask=True) == []
        achieved = float((~mask).sum()) / mask.numel()
        assert abs(achieved - 0.5) <= layer.structure.tolerance(tuple(mask.shape)), layer.name
        if layer.structure == st:
            assert layer.note == ""
    assert sp.verify() == {}
