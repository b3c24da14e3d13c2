"""BatchNorm folding and channels_last for the compacted model's inference form."""

from __future__ import annotations

import torch
from torch import nn

from sparsegrain import cli
from sparsegrain.deploy.compact import compact, load_compact, save_compact
from sparsegrain.deploy.compact.fold import foldable_pairs
from sparsegrain.models import create_model

TOL = 1e-5


class Net(nn.Module):
    """conv-BN-ReLU, a conv whose BN is read twice (not folded), a BatchNorm subclass with an
    activation (not folded), then a Linear-BN1d pair."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.c = nn.Conv2d(4, 4, 1, bias=False)
        self.bn_c = ActBN(4)
        self.fc = nn.Linear(4, 6)
        self.bn_fc = nn.BatchNorm1d(6)

    def forward(self, x):
        y = torch.relu(self.bn_a(self.a(x)))
        z = self.b(y)
        y = self.bn_b(z) + z  # z is read twice: bn_b does not fold
        y = self.bn_c(self.c(y))
        return self.bn_fc(self.fc(y.mean((2, 3))))


class ActBN(nn.BatchNorm2d):
    def forward(self, x):
        return torch.relu(super().forward(x))


def stats(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def test_foldable_pairs_follow_the_rule():
    m = stats(Net())
    assert foldable_pairs(m, torch.randn(2, 3, 8, 8)) == [("a", "bn_a"), ("fc", "bn_fc")]


def test_fold_bn_is_exact_and_removes_the_batchnorm_parameters():
    torch.manual_seed(0)
    m = stats(Net())
    x = torch.randn(2, 3, 8, 8)
    r = compact(m, x, fold_bn=True)
    assert r.folded == {"bn_a": "a", "bn_fc": "fc"}
    assert isinstance(r.model.bn_a, nn.Identity) and isinstance(r.model.bn_fc, nn.Identity)
    assert type(r.model.bn_c) is ActBN and isinstance(r.model.bn_b, nn.BatchNorm2d)
    assert r.params_after == r.params_before - 2 * 4 - 2 * 6  # gamma and beta of bn_a, bn_fc
    assert r.max_abs_diff <= TOL


def test_folded_channels_last_model_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    m = stats(create_model("resnet_tiny", num_classes=10, in_channels=3))
    with torch.no_grad():
        m.layer1[0].conv1.weight[:2] = 0
        m.layer1[0].bn1.weight[:2] = 0
        m.layer1[0].bn1.bias[:2] = 0
    x = torch.randn(2, 3, 12, 12)
    r = compact(m, x, fold_bn=True, channels_last=True)
    assert r.model.layer1[0].conv1.out_channels == 2  # width 4, two filters gone
    assert r.model.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert set(r.folded) >= {"bn1", "layer1.0.bn1", "layer1.0.bn2"}
    assert r.max_abs_diff <= TOL
    save_compact(tmp_path / "m.safetensors", r, None)
    fresh = create_model("resnet_tiny", num_classes=10, in_channels=3)
    back, meta = load_compact(tmp_path / "m.safetensors", model=fresh)
    assert meta["folded"] == r.folded and meta["channels_last"] is True
    assert torch.allclose(back(x), r.model(x), atol=1e-6)
    assert back.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_export_flags_need_compact(tmp_path, capsys):
    args = ["export", "--run", str(tmp_path), "--out", str(tmp_path / "m.onnx"), "--fold-bn"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--fold-bn applies to --compact only (the compacted model is rebuilt)")
    assert len(err.splitlines()) == 1
