"""Sparse kernels: CSR/BSR modules equal the dense layers; the measured choice; 2:4 on GPUs."""

import copy

import pytest
import torch
from torch import nn

from sparsegrain.deploy.kernels import (
    SparseConv2d,
    SparseLinear,
    block_fill,
    choose_block,
    conv_supported,
    format_kernel_report,
    is_2_4,
    sparse_module,
    to_semi_structured,
    to_sparse_kernels,
)
from sparsegrain.structures import parse_structure

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def prune_(module: nn.Module, spec: str, sparsity: float) -> nn.Module:
    with torch.no_grad():
        module.weight.mul_(parse_structure(spec).mask(module.weight, sparsity))
    return module


def close(a, b):
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["csr", "bsr:2x2", "bsr:4x4"])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_equals_dense(fmt, bias):
    torch.manual_seed(0)
    lin = prune_(nn.Linear(32, 16, bias=bias), "block:4x4", 0.75)
    sp = SparseLinear(lin, fmt)
    assert sp.format == fmt
    for x in (torch.randn(5, 32), torch.randn(2, 3, 32), torch.randn(32)):
        with torch.no_grad():
            assert close(sp(x), lin(x))


CONVS = [
    dict(in_channels=4, out_channels=8, kernel_size=3),
    dict(in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=8, kernel_size=(1, 3), stride=(2, 1), padding=(0, 2)),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding=2, dilation=2, bias=False),
    dict(in_channels=8, out_channels=8, kernel_size=1, stride=2),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding="valid"),
]


@pytest.mark.parametrize("kwargs", CONVS)
@pytest.mark.parametrize("fmt", ["csr", "bsr:2x2"])
def test_sparse_conv2d_equals_dense(kwargs, fmt):
    torch.manual_seed(0)
    conv = prune_(nn.Conv2d(**kwargs), "block:2x2", 0.7)
    sp = SparseConv2d(conv, fmt)
    x = torch.randn(3, kwargs["in_channels"], 9, 11)
    with torch.no_grad():
        assert close(sp(x), conv(x))
        assert close(sp(x[0]), conv(x[0]))  # unbatched input


def test_block_choice_and_unsupported_layers():
    w = torch.zeros(16, 16)
    w[4:8, 8:12] = 1.0  # one 4x4 block: 4x4 blocks are full, 8x8 ones a quarter full
    assert block_fill(w, (4, 4)) == 1.0 and block_fill(w, (8, 8)) == 0.25
    assert choose_block(w) == (4, 4)
    fine = torch.zeros(16, 16)
    fine[::3, ::5] = 1.0
    assert choose_block(fine) is None
    lin = nn.Linear(16, 16)
    with torch.no_grad():
        lin.weight.copy_(fine)
    with pytest.raises(ValueError, match="half full"):
        sparse_module(lin, "bsr")
    with pytest.raises(ValueError, match="does not divide"):
        sparse_module(nn.Linear(6, 6), "bsr:4x4")
    with pytest.raises(ValueError, match="unknown format 'coo'"):
        sparse_module(lin, "coo")
    assert "groups=2" in conv_supported(nn.Conv2d(4, 4, 3, groups=2))
    assert "padding_mode" in conv_supported(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    assert "same" in conv_supported(nn.Conv2d(4, 4, 3, padding="same"))
    with pytest.raises(ValueError, match="groups=2"):
        SparseConv2d(nn.Conv2d(4, 4, 3, groups=2))


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.fc = nn.Linear(16, 10)
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        x = self.grouped(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.mean((2, 3)))


def small_model():
    torch.manual_seed(0)
    m = Small()
    prune_(m.conv, "fine", 0.9)
    prune_(m.grouped, "fine", 0.9)
    prune_(m.fc, "fine", 0.5)
    prune_(m.unused, "fine", 0.9)
    return m


def fake_timer(sparse_s):
    """Dense layers take 1 s, sparse ones ``sparse_s``: the choice without real timing."""
    return lambda module, args: sparse_s if hasattr(module, "format") else 1.0


def test_choice_falls_back_to_dense_when_sparse_is_slower():
    model = small_model()
    x = torch.randn(2, 4, 8, 8)
    out, report = to_sparse_kernels(model, x, repeats=1, timer=fake_timer(2.0))
    assert report["replaced"] == []
    assert not any(isinstance(m, (SparseLinear, SparseConv2d)) for m in out.modules())
    row = {r["name"]: r for r in report["layers"]}
    assert row["conv"]["chosen"] == "dense" and row["conv"]["times"] == {"csr": 2.0}
    assert row["conv"]["best"] == "csr" and row["conv"]["speedup"] == 0.5
    assert "csr slower than dense" in row["conv"]["note"]
    assert "bsr:" in row["conv"]["note"]  # a fine mask: no half-full blocks
    with torch.no_grad():
        assert torch.equal(out.eval()(x), model.eval()(x))


def test_choice_takes_sparse_when_faster_and_reports_why_not_elsewhere():
    model = small_model()
    x = torch.randn(2, 4, 8, 8)
    out, report = to_sparse_kernels(model, x, repeats=1, timer=fake_timer(0.5))
    assert report["replaced"] == ["conv"]
    assert isinstance(out.conv, SparseConv2d) and isinstance(model.conv, nn.Conv2d)
    row = {r["name"]: r for r in report["layers"]}
    assert row["conv"]["chosen"] == "csr" and row["conv"]["dense_s"] == 1.0
    assert row["conv"]["sparse_s"] == 0.5 and row["conv"]["speedup"] == 2.0
    assert "groups=2" in row["grouped"]["note"]
    assert "below min_sparsity" in row["fc"]["note"] and row["fc"]["chosen"] == "dense"
    assert row["unused"]["note"] == "not run by the example input"
    assert model.training and out.training  # the capture pass ran in eval mode and restored it
    with torch.no_grad():
        assert close(out.eval()(x), model.eval()(x))
    copy.deepcopy(out)  # sparse buffers survive a deep copy
    assert "conv" in format_kernel_report(report)


def test_measured_choice_smoke():
    model = small_model()
    x = torch.randn(2, 4, 8, 8)
    out, report = to_sparse_kernels(model, x, min_sparsity=0.5, formats=("csr",), repeats=2)
    row = {r["name"]: r for r in report["layers"]}
    assert row["conv"]["dense_s"] > 0 and row["conv"]["sparse_s"] > 0
    assert row["fc"]["times"].keys() == {"csr"}
    with torch.no_grad():
        assert close(out.eval()(x), model.eval()(x))


def test_arguments_are_validated():
    model, x = small_model(), torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="formats: unknown format 'csc'"):
        to_sparse_kernels(model, x, formats=("csc",))
    with pytest.raises(ValueError, match="min_sparsity"):
        to_sparse_kernels(model, x, min_sparsity=1.5)
    with pytest.raises(ValueError, match="repeats"):
        to_sparse_kernels(model, x, repeats=0)


def test_2_4_check():
    w = torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3], [1, 1, 0, 0, 1, 1, 0, 0]])
    assert is_2_4(w)
    w[0, 1] = 5.0
    assert not is_2_4(w)
    assert not is_2_4(torch.zeros(2, 6))  # width not a multiple of 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_semi_structured_needs_cuda():
    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
        to_semi_structured(nn.Linear(8, 8))


@needs_cuda
def test_semi_structured_linear_and_conv_match_dense_half():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 40),
        nn.Linear(40, 10),
    )
    prune_(model[0], "nm:2:4", 0.5)
    prune_(model[3], "nm:2:4", 0.5)
    model = model.cuda().half()
    out, report = to_semi_structured(model, dtype=torch.float16)
    assert report["replaced"] == ["0", "3"]
    assert "not 2:4" in {r["name"]: r for r in report["layers"]}["4"]["note"]
    x = torch.randn(4, 16, 8, 8, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        want, got = model(x), out(x)
    assert torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2)
