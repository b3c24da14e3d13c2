"""The channel graph, one operator at a time: a tiny hand-written model per operator, chosen
filters zeroed, then ``compact`` (exact kept indices, parameter counts and output match, or the
pin with its note), BatchNorm pairing (``find_norms``) and coupled sets (``find_sets``)."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from torch import nn

from sparsegrain.deploy.compact import compact
from sparsegrain.graph import FX, RUN, channel_graph
from sparsegrain.sparsity.bn import find_norms
from sparsegrain.sparsity.couple import find_sets

TOL = 1e-5


def need(package: str):
    """The package through the project's importer (its torchvision workaround), else skip."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    from sparsegrain.models import external

    return {"timm": external.import_timm, "torchvision": external.import_torchvision}[package]()


def x8(n=2, c=3, size=8, seed=1):
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def params(m):
    return sum(p.numel() for p in m.parameters())


def zero_filters(layer, idx):
    with torch.no_grad():
        layer.weight[idx] = 0
        if layer.bias is not None:
            layer.bias[idx] = 0


def zero_bn(bn, idx):
    """gamma = beta = 0: the channel is exactly 0 after the BN, whatever its statistics."""
    with torch.no_grad():
        bn.weight[idx] = 0
        bn.bias[idx] = 0


def conv3(cin, cout, **kw):
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False, **kw)


def built(cls, *args, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(*args, **kw).eval()


def notes_of(r, name) -> str:
    return " ".join(r.notes.get(name, []))


def assert_pinned(r, layer, fragment):
    """Nothing removed, and the zeroed filter's note names why."""
    assert r.layers == {}
    assert r.params_after == r.params_before
    assert fragment in notes_of(r, layer), r.notes
    assert r.max_abs_diff <= TOL


# ---- depthwise and grouped convs ----------------------------------------------------------------


class DepthwiseNet(nn.Module):
    def __init__(self, groups=4):
        super().__init__()
        self.conv1, self.bn1 = conv3(3, 4), nn.BatchNorm2d(4)
        self.dw, self.bn2 = conv3(4, 4, groups=groups), nn.BatchNorm2d(4)
        self.pw = nn.Conv2d(4, 5, 1, bias=False)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.pw(F.relu(self.bn2(self.dw(x))))


def test_depthwise_conv_carries_its_producers_channel():
    m = built(DepthwiseNet)
    randomize_bn(m)
    zero_filters(m.conv1, [1])
    zero_bn(m.bn1, [1])
    zero_bn(m.bn2, [1])
    r = compact(m, x8())
    keep = [0, 2, 3]
    assert {n: (s.kind, s.out, s.inp) for n, s in r.layers.items()} == {
        "conv1": ("conv", keep, None),
        "bn1": ("norm", keep, None),
        "dw": ("conv", keep, None),
        "bn2": ("norm", keep, None),
        "pw": ("conv", None, keep),
    }
    assert r.model.dw.groups == 3 and r.model.dw.weight.shape == (3, 1, 3, 3)
    assert r.params_after == r.params_before - (3 * 9 + 2 + 9 + 2 + 5)
    assert r.params_after == params(r.model)
    assert r.max_abs_diff <= TOL


def test_depthwise_bn_shift_folds_into_the_pointwise_bias():
    """bn2's shift of the dead channel is a constant; the 1x1 conv reading it takes it as a bias."""
    m = built(DepthwiseNet)
    randomize_bn(m)
    zero_filters(m.conv1, [1])
    zero_bn(m.bn1, [1])
    with torch.no_grad():
        m.bn2.bias[1] = 0.7  # relu(0.7 + gamma * (0 - mean) / std) > 0: a constant
    r = compact(m, x8())
    assert r.layers["pw"].inp == [0, 2, 3] and r.layers["pw"].bias
    assert r.bias_added == ["pw"]
    assert r.params_after == r.params_before - (3 * 9 + 2 + 9 + 2 + 5) + 5
    assert r.max_abs_diff <= TOL


def test_grouped_conv_pins():
    m = built(DepthwiseNet, groups=2)
    zero_filters(m.conv1, [1])
    r = compact(m, x8())
    assert_pinned(r, "conv1", "'dw' is a grouped conv (2 groups of 2)")


# ---- BatchNorm subclasses -----------------------------------------------------------------------


class BNReLU(nn.BatchNorm2d):
    """A BatchNorm with its activation inside, as timm's ``BatchNormAct2d``."""

    def __init__(self, n):
        super().__init__(n)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


class SubclassNet(nn.Module):
    def __init__(self, norm=BNReLU):
        super().__init__()
        self.conv1, self.bn1 = conv3(3, 4), norm(4)
        self.conv2 = conv3(4, 3)

    def forward(self, x):
        return self.conv2(self.bn1(self.conv1(x)))


def timm_norm(n):
    return need("timm").layers.BatchNormAct2d(n, act_layer=nn.ReLU)


@pytest.mark.parametrize("norm", [BNReLU, timm_norm], ids=["own", "timm"])
def test_batchnorm_subclass_is_paired_and_compacted(norm):
    m = built(SubclassNet, norm=norm)
    cls = type(m.bn1)
    assert find_norms(m, ["conv1", "conv2"], x8()) == ({"conv1": "bn1"}, {})
    zero_filters(m.conv1, [2])
    with torch.no_grad():  # the shift is -0.5: the ReLU inside the norm makes the channel 0
        m.bn1.bias[2] = -0.5
    r = compact(m, x8())
    assert r.layers["conv1"].out == [0, 1, 3] and r.layers["bn1"].out == [0, 1, 3]
    assert r.layers["conv2"].inp == [0, 1, 3]
    assert type(r.model.bn1) is cls and r.model.bn1.num_features == 3
    assert r.params_after == r.params_before - (3 * 9 + 2 + 3 * 9)
    assert r.max_abs_diff <= TOL


def test_plain_batchnorm_shift_before_a_padded_conv_is_kept():
    """The same shift with the ReLU outside the norm (none here): -0.5 is read through padding."""
    m = built(SubclassNet, norm=nn.BatchNorm2d)
    zero_filters(m.conv1, [2])
    with torch.no_grad():
        m.bn1.bias[2] = -0.5
    r = compact(m, x8())
    assert_pinned(r, "conv1", "read through zero padding")


# ---- LayerNorm (ConvNeXt) and GroupNorm ---------------------------------------------------------


class ConvNeXtBlock(nn.Module):
    def __init__(self, c=4, hidden=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1, bias=False)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.act, self.fc2 = nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(x.permute(0, 2, 3, 1))
        y = self.gamma * self.fc2(self.act(self.fc1(y)))
        return self.head(x + y.permute(0, 3, 1, 2))


def test_layernorm_pins_the_stream_and_the_mlp_hidden_goes():
    m = built(ConvNeXtBlock)
    zero_filters(m.stem, [1])
    with torch.no_grad():  # hidden 2 and 5: rows zero, biases kept -> GELU(bias) constants
        m.fc1.weight[[2, 5]] = 0
        m.fc1.bias[[2, 5]] = torch.tensor([0.4, -0.3])
    r = compact(m, x8())
    keep = [0, 1, 3, 4, 6, 7]
    assert {n: (s.out, s.inp) for n, s in r.layers.items()} == {
        "fc1": (keep, None),
        "fc2": (None, keep),
    }
    assert r.params_after == r.params_before - (2 * (4 + 1) + 2 * 4)
    assert "LayerNorm 'norm' normalizes over these channels" in notes_of(r, "stem")
    assert r.model.stem.weight.shape == (4, 3, 1, 1) and r.model.gamma.shape == (4,)
    gelu = F.gelu(torch.tensor([0.4, -0.3]))
    folded = m.fc2.bias + m.fc2.weight[:, [2, 5]] @ gelu
    assert torch.allclose(r.model.fc2.bias, folded, atol=1e-6)
    assert not torch.allclose(r.model.fc2.bias, m.fc2.bias, atol=1e-3)
    assert r.max_abs_diff <= TOL


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.gn, self.conv2 = conv3(3, 4), nn.GroupNorm(2, 4), conv3(4, 3)

    def forward(self, x):
        return self.conv2(F.relu(self.gn(self.conv1(x))))


def test_groupnorm_pins():
    m = built(GroupNormNet)
    zero_filters(m.conv1, [3])
    r = compact(m, x8())
    assert_pinned(r, "conv1", "GroupNorm 'gn' normalizes over these channels")


# ---- Linear on (N, L, C) ------------------------------------------------------------------------


class TokenMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 6)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(x)))


def test_linear_on_rank3_tokens():
    m = built(TokenMLP)
    zero_filters(m.fc1, [1, 4])  # rows and biases: GELU(0) = 0, nothing to fold
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(3))
    r = compact(m, x)
    keep = [0, 2, 3, 5, 6, 7]
    assert {n: (s.out, s.inp) for n, s in r.layers.items()} == {
        "fc1": (keep, None),
        "fc2": (None, keep),
    }
    assert torch.equal(r.model.fc2.bias, m.fc2.bias)
    assert r.params_after == r.params_before - (2 * (6 + 1) + 2 * 6)
    assert r.max_abs_diff <= TOL


# ---- concatenation, chunk / split, channel shuffle ---------------------------------------------


class DenseNet(nn.Module):
    """DenseNet-like: the consumer reads cat([input, a, b]) (3 + 3 + 4 channels)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv3(3, 3), conv3(3, 4), nn.Conv2d(10, 5, 1, bias=False)

    def forward(self, x):
        return self.c(torch.cat([x, F.relu(self.a(x)), F.relu(self.b(x))], dim=1))


def test_concat_removes_the_channel_at_its_offset():
    m = built(DenseNet)
    zero_filters(m.b, [2])  # concat channel 3 + 3 + 2 = 8
    r = compact(m, x8())
    assert {n: (s.out, s.inp) for n, s in r.layers.items()} == {
        "b": ([0, 1, 3], None),
        "c": (None, [0, 1, 2, 3, 4, 5, 6, 7, 9]),
    }
    assert r.params_after == r.params_before - (3 * 9 + 5)
    assert r.max_abs_diff <= TOL


class Pieces(nn.Module):
    """conv1's 4 channels cut in two along ``dim``; each half read by its own conv."""

    def __init__(self, how, dim=1):
        super().__init__()
        self.how, self.dim = how, dim
        self.conv1 = conv3(3, 4)
        self.conv2, self.conv3 = conv3(4 if dim != 1 else 2, 3), conv3(4 if dim != 1 else 2, 3)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        if self.how == "chunk":
            a, b = y.chunk(2, dim=self.dim)
        else:
            a, b = torch.split(y, [2, 2] if self.dim == 1 else 4, dim=self.dim)
        return self.conv2(a) + self.conv3(b)


@pytest.mark.parametrize("how", ["chunk", "split"])
def test_chunk_along_the_channel_axis_pins(how):
    m = built(Pieces, how)
    zero_filters(m.conv1, [0])
    r = compact(m, x8())
    assert_pinned(r, "conv1", "takes some of the channels")


@pytest.mark.parametrize("how", ["chunk", "split"])
def test_chunk_along_a_spatial_axis_does_not_pin(how):
    m = built(Pieces, how, dim=3)
    zero_filters(m.conv1, [1])
    r = compact(m, x8())
    assert {n: (s.out, s.inp) for n, s in r.layers.items()} == {
        "conv1": ([0, 2, 3], None),
        "conv2": (None, [0, 2, 3]),
        "conv3": (None, [0, 2, 3]),
    }
    assert r.params_after == r.params_before - (3 * 9 + 2 * 3 * 9)
    assert r.max_abs_diff <= TOL


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = conv3(3, 4), conv3(4, 3)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.conv2(y)


def test_channel_shuffle_pins():
    m = built(Shuffle)
    zero_filters(m.conv1, [1])
    r = compact(m, x8())
    assert_pinned(r, "conv1", "splits the channel axis")


# ---- reshape / flatten into a Linear, permute / transpose --------------------------------------


class FlattenNet(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)  # 6 px -> 3 x 3
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 9, 5)

    def forward(self, x):
        y = F.relu(self.conv(x))
        if self.how == "flatten":
            y = torch.flatten(y, 1)
        elif self.how == "reshape":
            y = y.reshape(y.size(0), -1)
        elif self.how == "view":
            y = y.view(y.shape[0], -1)
        else:
            y = self.flat(y)
        return self.fc(y)


@pytest.mark.parametrize("how", ["flatten", "reshape", "view", "module"])
def test_flatten_removes_the_channels_block_of_linear_columns(how):
    m = built(FlattenNet, how)
    zero_filters(m.conv, [2])  # columns 18 .. 26
    r = compact(m, x8(size=6))
    assert r.layers["conv"].out == [0, 1, 3]
    assert r.layers["fc"].inp == [*range(0, 18), *range(27, 36)]
    assert set(r.layers) == {"conv", "fc"}
    assert r.params_after == r.params_before - (3 * 9 + 5 * 9)
    assert r.max_abs_diff <= TOL


class ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.fc, self.conv2 = conv3(3, 4), nn.Linear(4, 5), nn.Conv2d(5, 3, 1)

    def forward(self, x):
        y = self.fc(F.relu(self.conv1(x)).permute(0, 2, 3, 1))  # (N, H, W, 5)
        return self.conv2(y.transpose(1, 3))  # (N, 5, W, H)


def test_permute_and_transpose_keep_the_channel_axis():
    m = built(ChannelsLast)
    zero_filters(m.conv1, [1])
    zero_filters(m.fc, [3])
    r = compact(m, x8())
    assert {n: (s.out, s.inp) for n, s in r.layers.items()} == {
        "conv1": ([0, 2, 3], None),
        "fc": ([0, 1, 2, 4], [0, 2, 3]),
        "conv2": (None, [0, 1, 2, 4]),
    }
    fc_kept = 4 * 3 + 4
    assert r.params_after == r.params_before - (3 * 9 + (5 * 4 + 5 - fc_kept) + 3)
    assert r.max_abs_diff <= TOL


# ---- residual adds, stochastic depth, layer scale, products -------------------------------------


class DropPath(nn.Module):
    """Stochastic depth as timm writes it: identity in eval."""

    def __init__(self, p=0.2):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


def stochastic_depth():
    return need("torchvision").ops.StochasticDepth(0.2, "row")


class Residual(nn.Module):
    """stem -> bn0 -> (+ drop(bn_b(conv_b(relu(bn_a(conv_a(.))))))) -> relu -> head."""

    def __init__(self, drop=nn.Identity):
        super().__init__()
        self.stem, self.bn0 = conv3(3, 4), nn.BatchNorm2d(4)
        self.conv_a, self.bn_a = conv3(4, 4), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = conv3(4, 4), nn.BatchNorm2d(4)
        self.drop = drop()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        s = self.bn0(self.stem(x))
        y = self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(s)))))
        return self.head(F.relu(s + self.drop(y)))


@pytest.mark.parametrize("drop", [nn.Identity, DropPath, stochastic_depth])
def test_residual_add_needs_both_writers(drop):
    m = built(Residual, drop=drop)
    zero_filters(m.stem, [1])
    r = compact(m, x8())
    assert r.layers == {} and r.params_after == r.params_before  # the block still writes it
    assert "also written by 'conv_b'" in notes_of(r, "stem")

    zero_filters(m.conv_b, [1])
    r = compact(m, x8())
    keep = [0, 2, 3]
    assert {n: (s.out, s.inp) for n, s in r.layers.items()} == {
        "stem": (keep, None),
        "bn0": (keep, None),
        "conv_a": (None, keep),
        "conv_b": (keep, None),
        "bn_b": (keep, None),
        "head": (None, keep),
    }
    assert r.params_after == r.params_before - (3 * 9 + 2 + 4 * 9 + 4 * 9 + 2 + 2)
    assert r.max_abs_diff <= TOL


class LayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.conv_a, self.conv_b = conv3(3, 4), conv3(4, 4), conv3(4, 4)
        self.gamma = nn.Parameter(torch.full((1, 4, 1, 1), 0.1))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        s = self.stem(x)
        return self.head(s + self.gamma * self.conv_b(F.relu(self.conv_a(s))))


def test_layer_scale_parameter_is_sliced():
    """Both writers of stream channel 1 zeroed: gamma (1, C, 1, 1) loses entry 1 with them."""
    m = built(LayerScale)
    zero_filters(m.stem, [1])
    zero_filters(m.conv_b, [1])
    r = compact(m, x8())
    keep = [0, 2, 3]
    assert {n: (s.kind, s.out, s.inp, s.axis) for n, s in r.layers.items()} == {
        "stem": ("conv", keep, None, 0),
        "conv_a": ("conv", None, keep, 0),
        "conv_b": ("conv", keep, None, 0),
        "gamma": ("param", keep, None, 1),
        "head": ("conv", None, keep, 0),
    }
    assert r.model.gamma.shape == (1, 3, 1, 1)
    assert r.params_after == r.params_before - (3 * 9 + 4 * 9 + 4 * 9 + 1 + 2)
    assert r.max_abs_diff <= TOL


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_a, self.conv_b, self.conv_c = conv3(3, 4), conv3(3, 4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv_c(self.conv_a(x) * torch.tanh(self.conv_b(x)))


def test_product_of_two_branches_zero_times_anything():
    m = built(Product)
    zero_filters(m.conv_a, [2])
    r = compact(m, x8())
    keep = [0, 1, 3]
    assert {n: (s.out, s.inp) for n, s in r.layers.items()} == {
        "conv_a": (keep, None),
        "conv_b": (keep, None),  # its filter 2 is not zero, but only multiplies zeros
        "conv_c": (None, keep),
    }
    assert r.params_after == r.params_before - (3 * 9 + 3 * 9 + 2)
    assert r.max_abs_diff <= TOL


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = conv3(3, 4)
        self.fc1, self.fc2 = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 4, 1)
        self.conv2 = nn.Conv2d(4, 3, 1, bias=False)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.conv2(x * s)


def test_squeeze_excitation_gate_follows_the_channel():
    m = built(SqueezeExcite)
    zero_filters(m.conv1, [1])
    r = compact(m, x8())
    keep = [0, 2, 3]
    assert {n: (s.out, s.inp) for n, s in r.layers.items()} == {
        "conv1": (keep, None),
        "fc1": (None, keep),
        "fc2": (keep, None),
        "conv2": (None, keep),
    }
    assert r.params_after == r.params_before - (3 * 9 + 2 + (2 + 1) + 3)
    assert r.max_abs_diff <= TOL


# ---- pooling ------------------------------------------------------------------------------------


class Pooled(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.conv1, self.bn1, self.pool = conv3(3, 4), nn.BatchNorm2d(4), pool
        self.conv2 = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.conv2(self.pool(F.relu(self.bn1(self.conv1(x)))))


POOLS = {
    "max": lambda: nn.MaxPool2d(2),
    "adaptive": lambda: nn.AdaptiveAvgPool2d(3),
    "avg_padded": lambda: nn.AvgPool2d(3, stride=1, padding=1),
}


@pytest.mark.parametrize(
    "pool, shift, removed",
    [
        ("max", 0.0, True),
        ("adaptive", 0.0, True),
        ("avg_padded", 0.0, True),  # zero padding averages zeros with zeros
        ("max", 0.6, True),  # a constant stays a constant: folded into conv2's bias
        ("adaptive", 0.6, True),
        ("avg_padded", 0.6, False),  # the border averages 0.6 with padding: not a constant
    ],
)
def test_pooling(pool, shift, removed):
    m = built(Pooled, POOLS[pool]())
    randomize_bn(m)
    zero_filters(m.conv1, [3])
    zero_bn(m.bn1, [3])
    with torch.no_grad():
        m.bn1.bias[3] = shift
    r = compact(m, x8())
    if removed:
        assert {n: (s.out, s.inp) for n, s in r.layers.items()} == {
            "conv1": ([0, 1, 2], None),
            "bn1": ([0, 1, 2], None),
            "conv2": (None, [0, 1, 2]),
        }
        assert r.params_after == r.params_before - (3 * 9 + 2 + 3)
        assert torch.equal(r.model.conv2.bias, m.conv2.bias) == (shift == 0)
        assert r.max_abs_diff <= TOL
    else:
        assert_pinned(r, "conv1", "a reader uses it")


# ---- models torch.fx cannot trace, dict outputs -------------------------------------------------


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = conv3(3, 4), conv3(4, 2)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        if x.sum() > 0:  # Python control flow on a value: torch.fx refuses it
            y = y * 2
        return self.conv2(y)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_untraceable_model_is_compacted_from_a_run(sign):
    m = built(DataDependent)
    zero_filters(m.conv1, [0, 2])
    x = x8().abs() * sign
    r = compact(m, x)
    assert r.tracer == RUN
    assert {n: (s.out, s.inp) for n, s in r.layers.items()} == {
        "conv1": ([1, 3], None),
        "conv2": (None, [1, 3]),
    }
    assert r.params_after == r.params_before - (2 * 3 * 9 + 2 * 2 * 9)
    assert r.max_abs_diff <= TOL


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv3(3, 4)
        self.fc, self.aux = nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x):
        p = F.relu(self.conv(x)).mean((2, 3))
        return {"logits": self.fc(p), "aux": self.aux(p)}


def test_dict_output():
    m = built(DictOutput)
    zero_filters(m.conv, [3])
    r = compact(m, x8())
    assert r.tracer == FX
    assert {n: (s.out, s.inp) for n, s in r.layers.items()} == {
        "conv": ([0, 1, 2], None),
        "fc": (None, [0, 1, 2]),
        "aux": (None, [0, 1, 2]),
    }
    assert r.params_after == r.params_before - (3 * 9 + 3 + 2)
    assert r.max_abs_diff <= TOL


# ---- coupled sets -------------------------------------------------------------------------------


def conv_bn(cin, cout, k=1, groups=1, act=True):
    layers = [
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return nn.Sequential(*layers, *([nn.ReLU6()] if act else []))


class InvertedResidual(nn.Module):
    def __init__(self, c=4, t=2):
        super().__init__()
        self.expand = conv_bn(c, c * t)
        self.dw = conv_bn(c * t, c * t, 3, groups=c * t)
        self.project = conv_bn(c * t, c, act=False)

    def forward(self, x):
        return x + self.project(self.dw(self.expand(x)))


class TinyMobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 4, 3)
        self.b1, self.b2 = InvertedResidual(), InvertedResidual()
        self.head = nn.Conv2d(4, 6, 1)

    def forward(self, x):
        return self.head(self.b2(self.b1(self.stem(x))))


def test_couple_inverted_residual():
    m = built(TinyMobileNet)
    assert find_sets(m, x8()) == [
        (["stem.0", "b1.project.0", "b2.project.0"], [list(range(4))] * 3),
        (["b1.expand.0", "b1.dw.0"], [list(range(8))] * 2),
        (["b2.expand.0", "b2.dw.0"], [list(range(8))] * 2),
    ]


def test_couple_inverted_residual_compacts_the_set_together():
    m = built(TinyMobileNet)
    for name in ("stem.0", "b1.project.0", "b2.project.0"):
        zero_filters(m.get_submodule(name), [2])
    r = compact(m, x8())
    keep = [0, 1, 3]
    assert {n: s.out for n, s in r.layers.items() if s.out} == {
        "stem.0": keep, "stem.1": keep, "b1.project.0": keep, "b1.project.1": keep,
        "b2.project.0": keep, "b2.project.1": keep,
    }  # fmt: skip
    assert {n: s.inp for n, s in r.layers.items() if s.inp} == {
        "b1.expand.0": keep, "b2.expand.0": keep, "head": keep,
    }  # fmt: skip
    removed = 3 * 9 + 2 + 2 * (8 + 2) + 2 * 8 + 6
    assert r.params_after == r.params_before - removed
    assert r.max_abs_diff <= TOL


def sets_by_first(sets):
    return {members[0]: members for members, _ in sets}


@pytest.mark.slow
def test_couple_torchvision_mobilenet_v2():
    tv = need("torchvision")
    torch.manual_seed(0)
    m = tv.models.mobilenet_v2(num_classes=10).eval()
    sets = find_sets(m, torch.randn(1, 3, 32, 32))
    found = sets_by_first(sets)
    assert found["features.0.0"] == ["features.0.0", "features.1.conv.0.0"]  # stem + depthwise
    assert found["features.2.conv.0.0"] == ["features.2.conv.0.0", "features.2.conv.1.0"]
    assert found["features.2.conv.2"] == ["features.2.conv.2", "features.3.conv.2"]
    assert found["features.4.conv.2"] == [f"features.{i}.conv.2" for i in (4, 5, 6)]
    assert found["features.7.conv.2"] == [f"features.{i}.conv.2" for i in (7, 8, 9, 10)]
    ids = dict((members[0], ids) for members, ids in sets)
    assert ids["features.4.conv.2"] == [list(range(32))] * 3
    assert len(sets) == 22  # 17 expand/depthwise pairs (the stem's included), 5 streams


@pytest.mark.slow
def test_shufflenet_v2_branch_outputs_are_pinned_by_the_shuffle():
    tv = need("torchvision")
    torch.manual_seed(0)
    m = tv.models.shufflenet_v2_x0_5(num_classes=10).eval()
    cg = channel_graph(m, torch.randn(1, 3, 32, 32))
    pins = cg.pin_reasons()

    def reasons(layer):
        roots = cg.roots(cg.writers[layer][0]).tolist()
        return [sorted({w for w in pins.get(r, [])}) for r in roots]

    shuffle = "splits the channel axis (its sizes would not follow a removal)"
    for layer, n in [("stage2.0.branch1.2", 24), ("stage2.0.branch2.5", 24),
                     ("stage2.1.branch2.5", 24), ("stage3.0.branch2.5", 48)]:  # fmt: skip
        got = reasons(layer)
        assert len(got) == n and all(len(w) == 1 and w[0].endswith(shuffle) for w in got), layer
    assert reasons("stage2.1.branch2.0") == [[]] * 24  # inside a branch: free
    sets = sets_by_first(find_sets(m, torch.randn(1, 3, 32, 32)))
    assert sets["conv1.0"] == ["conv1.0", "stage2.0.branch1.0"]
    assert sets["stage2.1.branch2.0"] == ["stage2.1.branch2.0", "stage2.1.branch2.3"]


# ---- moves whose sizes are written into the model: they cannot follow a removal ----------------


class FixedMove(nn.Module):
    """conv (4 channels, 6 px -> 3 x 3) -> a move written with literal sizes -> a reader."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(36, 5)
        self.c2 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        if self.how == "view":
            return self.fc(y.view(-1, 36))
        if self.how == "index":
            return self.c2(y[:, [3, 2, 1, 0]])
        return self.c2(y.roll(1, 1))


@pytest.mark.parametrize(
    "how, why",
    [
        ("view", "sets the size of a channel axis to the number 36"),
        ("index", "indexes a channel axis by number"),
        ("roll", "rolls a channel axis"),
    ],
)
def test_moves_with_literal_sizes_pin(how, why):
    m = built(FixedMove, how)
    zero_filters(m.conv, [3])
    r = compact(m, x8(size=6))
    assert r.layers == {} and r.params_after == r.params_before
    assert r.max_abs_diff <= TOL
    assert why in " ".join(r.notes["conv"])


class PadsItself(nn.Conv2d):
    """A conv that pads with zeros in its own forward (as timm's Conv2dSame): padding=0."""

    def forward(self, x):
        return super().forward(F.pad(x, (1, 1, 1, 1)))


class ConstantIntoSelfPadding(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = PadsItself(4, 4, 3, padding=0)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_conv_that_pads_in_its_own_forward_is_not_folded_through():
    m = built(ConstantIntoSelfPadding)
    with torch.no_grad():
        m.a.weight[1] = 0
        m.a.bias[1] = 0.5  # a constant 0.5 channel, read through b's own zero padding
    r = compact(m, x8())
    assert r.layers == {} and r.max_abs_diff <= TOL
    assert "read through zero padding" in " ".join(r.notes["a"])
