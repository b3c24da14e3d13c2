"""Model zoo: exact parameter counts, shapes, names, layouts and error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sparsegrain.core.errors import ConfigError
from sparsegrain.models import MODELS, create_model, list_models, model_options

ALL_NAMES = [
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet50_v1",
    "resnet50_v1_5",
    "vgg11",
    "vgg16",
    "resnet_tiny",
    "vgg_tiny",
    "mlp_tiny",
    "convnet_tiny",
]
TINY = ["resnet_tiny", "vgg_tiny", "mlp_tiny", "convnet_tiny"]
# Narrow versions of the big models keep the shape tests fast; the architecture is the same.
FAST_KWARGS = {"resnet18": 8, "resnet34": 8, "resnet50": 8, "resnet50_v1": 8, "resnet50_v1_5": 8}
FAST_KWARGS |= {"vgg11": 8, "vgg16": 8, "resnet56": 4}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fast_model(name: str, **kwargs) -> nn.Module:
    if name in FAST_KWARGS:
        kwargs.setdefault("width", FAST_KWARGS[name])
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("in_channels", 3)
    return create_model(name, **kwargs)


def conv_bn(c_in: int, c_out: int, k: int) -> int:
    """Parameters of a bias-free k x k conv followed by BN (weight + bias)."""
    return c_in * c_out * k * k + 2 * c_out


def cifar_resnet_params(n: int, w: int, classes: int, c_in: int) -> int:
    """He et al. 2016 sec 4.2 with option-B (1x1 conv + BN) shortcuts where the shape changes."""
    total = conv_bn(c_in, w, 3)  # stem
    for c_prev, c in ((w, w), (w, 2 * w), (2 * w, 4 * w)):
        total += conv_bn(c_prev, c, 3) + conv_bn(c, c, 3)  # first block of the stage
        if c_prev != c:
            total += conv_bn(c_prev, c, 1)  # projection shortcut
        total += (n - 1) * 2 * conv_bn(c, c, 3)  # the other blocks
    return total + 4 * w * classes + classes  # fc


def vgg_params(cfg: list[int], classes: int, c_in: int) -> int:
    total, c_prev = 0, c_in
    for c in cfg:
        total, c_prev = total + conv_bn(c_prev, c, 3), c
    return total + c_prev * classes + classes


# ---- parameter counts ------------------------------------------------------------------------


def test_resnet20_count_is_the_option_b_figure():
    assert cifar_resnet_params(3, 16, 10, 3) == 272_474
    model = create_model("resnet20", num_classes=10, in_channels=3)
    assert n_params(model) == 272_474


@pytest.mark.parametrize(
    ("name", "n", "width", "classes", "c_in"),
    [
        ("resnet20", 3, 8, 100, 1),
        ("resnet32", 5, 16, 10, 3),
        ("resnet56", 9, 16, 10, 3),
        ("resnet_tiny", 1, 4, 10, 3),
        ("resnet_tiny", 1, 6, 2, 1),
    ],
)
def test_cifar_resnet_counts_follow_the_formula(name, n, width, classes, c_in):
    model = create_model(name, num_classes=classes, in_channels=c_in, width=width)
    assert n_params(model) == cifar_resnet_params(n, width, classes, c_in)


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet50_v1", 25_557_032),
        ("resnet50_v1_5", 25_557_032),
    ],
)
def test_imagenet_resnet_counts_are_the_published_ones(name, count):
    with torch.device("meta"):  # shapes only: no 25M-element init on the CPU
        model = create_model(name, num_classes=1000, in_channels=3)
    assert n_params(model) == count


def test_small_input_resnet18_swaps_the_stem():
    model = create_model("resnet18", num_classes=1000, in_channels=3, small_input=True)
    assert n_params(model) == 11_689_512 - 3 * 64 * (7 * 7 - 3 * 3)
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 1000)


def test_vgg_counts_follow_the_formula():
    vgg11 = [64, 128, 256, 256, 512, 512, 512, 512]
    assert n_params(create_model("vgg11", num_classes=10, in_channels=3)) == vgg_params(
        vgg11, 10, 3
    )
    half = [c // 2 for c in vgg11]
    model = create_model("vgg11", num_classes=100, in_channels=1, width=32)
    assert n_params(model) == vgg_params(half, 100, 1)
    vgg16 = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    model = create_model("vgg16", num_classes=10, in_channels=3, width=8)
    assert n_params(model) == vgg_params([c // 8 for c in vgg16], 10, 3)
    assert n_params(create_model("vgg_tiny", num_classes=10, in_channels=3)) == vgg_params(
        [4, 8, 8], 10, 3
    )


def test_mlp_tiny_layers():
    model = create_model("mlp_tiny", num_classes=10, in_channels=1)
    assert model.fc1.weight.shape == (32, 28 * 28)
    assert model.fc.weight.shape == (10, 32)
    model = create_model("mlp_tiny", num_classes=3, in_channels=2, input_size=8, hidden=5)
    assert n_params(model) == (2 * 8 * 8 * 5 + 5) + (5 * 3 + 3)
    assert model(torch.randn(4, 2, 8, 8)).shape == (4, 3)
    with pytest.raises(ValueError, match=r"expected: \(N, C, 8, 8\)"):
        model(torch.randn(4, 2, 28, 28))


def test_convnet_tiny_has_each_odd_conv():
    model = create_model("convnet_tiny", num_classes=10, in_channels=3)
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if hasattr(m, "groups")}
    assert shapes == {
        "conv1": (8, 3, 3, 3),
        "grouped": (16, 4, 3, 3),
        "depthwise": (16, 1, 3, 3),
        "pointwise": (16, 16, 1, 1),
        "conv1x3": (16, 16, 1, 3),
        "conv3x1": (16, 16, 3, 1),
        "dilated": (16, 16, 3, 3),
    }
    assert (model.grouped.groups, model.depthwise.groups) == (2, 16)
    assert model.dilated.dilation == (2, 2)
    assert model.dilated.bias is not None
    assert model.conv1.bias is None


# ---- forward passes --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_output_shape_three_channels(name):
    model = fast_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 7)
        if name != "mlp_tiny":
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_one_input_channel(name):
    model = fast_model(name, in_channels=1, num_classes=10).eval()
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert first.weight.shape[1] == (28 * 28 if name == "mlp_tiny" else 1)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet20", "resnet_tiny", "resnet56"])
def test_cifar_resnet_takes_inputs_down_to_8px(name):
    model = fast_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 10)
        assert model(torch.randn(1, 3, 9, 13)).shape == (1, 10)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_channels_last_gives_the_same_output(name):
    torch.manual_seed(0)
    model = fast_model(name).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_first_conv_and_classifier_names(name):
    model = fast_model(name, num_classes=5)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first = {"vgg11": "features.0", "vgg16": "features.0", "vgg_tiny": "features.0"}
    last = {"vgg11": "classifier", "vgg16": "classifier", "vgg_tiny": "classifier"}
    assert layers[0][0] == first.get(name, "fc1" if name == "mlp_tiny" else "conv1")
    assert layers[-1][0] == last.get(name, "fc")
    assert isinstance(layers[-1][1], nn.Linear)
    assert layers[-1][1].out_features == 5


def test_resnet_names_match_torchvision_keys():
    keys = set(fast_model("resnet50").state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight",
        "layer2.0.conv3.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
    ):
        assert key in keys
    resnet18 = fast_model("resnet18")
    assert resnet18.layer1[0].downsample is None
    assert resnet18.layer2[0].downsample[0].stride == (2, 2)
    resnet20 = fast_model("resnet20")
    assert resnet20.layer1[0].downsample is None
    assert resnet20.layer3[0].downsample[0].weight.shape == (64, 32, 1, 1)


# ---- ResNet options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "strides"),
    [
        ("resnet50", {"layout": "v1"}, ((2, 2), (1, 1))),
        ("resnet50", {"layout": "v1.5"}, ((1, 1), (2, 2))),
        ("resnet50", {}, ((1, 1), (2, 2))),
        ("resnet50_v1", {}, ((2, 2), (1, 1))),
        ("resnet50_v1_5", {}, ((1, 1), (2, 2))),
        ("resnet50_v1.5", {}, ((1, 1), (2, 2))),
    ],
)
def test_v1_puts_the_stride_in_the_1x1_and_v15_in_the_3x3(name, kwargs, strides):
    block = fast_model(name, **kwargs).layer2[0]
    assert block.conv1.kernel_size == (1, 1)
    assert block.conv2.kernel_size == (3, 3)
    assert (block.conv1.stride, block.conv2.stride) == strides
    assert block.downsample[0].stride == (2, 2)


def test_layouts_agree_on_everything_but_the_stride():
    v1, v15 = fast_model("resnet50", layout="v1"), fast_model("resnet50", layout="v1.5")
    shapes = {k: v.shape for k, v in v1.state_dict().items()}
    assert shapes == {k: v.shape for k, v in v15.state_dict().items()}
    with torch.no_grad():
        assert v1.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    # BasicBlock has one layout; the option is accepted and changes nothing.
    a, b = fast_model("resnet18", layout="v1"), fast_model("resnet18", layout="v1.5")
    assert [m.stride for m in a.modules() if isinstance(m, nn.Conv2d)] == [
        m.stride for m in b.modules() if isinstance(m, nn.Conv2d)
    ]


@pytest.mark.parametrize(("name", "bn"), [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual(name, bn):
    model = fast_model(name, zero_init_residual=True)
    blocks = [m for m in model.modules() if hasattr(m, "downsample")]
    assert len(blocks) == (8 if name == "resnet18" else 16)
    for block in blocks:
        assert torch.count_nonzero(getattr(block, bn).weight) == 0
        assert torch.count_nonzero(block.bn1.weight) == block.bn1.weight.numel()
    default = fast_model(name)
    assert all(torch.all(getattr(b, bn).weight == 1) for b in default.modules() if hasattr(b, bn))


# ---- registry, options and errors ------------------------------------------------------------


def test_list_models_covers_every_name():
    listed = list_models()
    assert [n for n, _ in listed] == ALL_NAMES == MODELS.names()
    for name, doc in listed:
        assert doc == MODELS.get(name).__doc__
        assert doc and "\n" not in doc


def test_model_options():
    assert model_options("resnet20") == {"width": 16}
    assert model_options("ResNet50") == {
        "layout": "v1.5",
        "width": 64,
        "small_input": False,
        "zero_init_residual": False,
    }
    assert model_options("resnet50_v1.5") == {
        "width": 64,
        "small_input": False,
        "zero_init_residual": False,
    }
    assert model_options("vgg16") == {"width": 64}
    assert model_options("resnet_tiny") == {"width": 4}
    assert model_options("vgg_tiny") == {"width": 4}
    assert model_options("mlp_tiny") == {"input_size": 28, "hidden": 32}
    assert model_options("convnet_tiny") == {"width": 8}


def test_name_lookup_ignores_case_and_takes_aliases():
    assert isinstance(create_model("ResNet_Tiny", num_classes=10, in_channels=3), nn.Module)
    block = create_model("RESNET50_V1.5", num_classes=10, in_channels=3, width=8).layer2[0]
    assert block.conv2.stride == (2, 2)


def test_factory_defaults_and_direct_call():
    model = MODELS.get("resnet_tiny")()
    assert model.fc.out_features == 10
    assert model.conv1.in_channels == 3
    with pytest.raises(ConfigError, match="has no option 'widht'"):
        MODELS.get("resnet_tiny")(widht=3)


def test_unknown_name():
    choices = ", ".join(sorted([*ALL_NAMES, "resnet50_v1.5"]))
    with pytest.raises(ConfigError) as err:
        create_model("resnet-20", num_classes=10, in_channels=3)
    assert str(err.value) == (
        f"unknown model 'resnet-20' (did you mean 'resnet20'?); choose from: {choices}"
    )
    with pytest.raises(ConfigError) as err:
        model_options("alexnet")
    assert str(err.value) == f"unknown model 'alexnet'; choose from: {choices}"


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        (
            "resnet20",
            {"widht": 8},
            "model 'resnet20' has no option 'widht' (did you mean 'width'?); "
            "allowed: width, num_classes, in_channels",
        ),
        (
            "resnet50_v1",
            {"layout": "v1.5"},
            "model 'resnet50_v1' has no option 'layout'; "
            "allowed: width, small_input, zero_init_residual, num_classes, in_channels",
        ),
        (
            "mlp_tiny",
            {"num_class": 3},
            "model 'mlp_tiny' has no option 'num_class' (did you mean 'num_classes'?); "
            "allowed: input_size, hidden, num_classes, in_channels",
        ),
    ],
)
def test_unknown_option(name, kwargs, message):
    with pytest.raises(ConfigError) as err:
        create_model(name, num_classes=10, in_channels=3, **kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("resnet20", {"width": 0}, "option 'width' must be an integer >= 1, got 0"),
        ("resnet20", {"width": 2.5}, "option 'width' must be an integer >= 1, got 2.5"),
        ("resnet20", {"width": True}, "option 'width' must be an integer >= 1, got True"),
        ("resnet20", {"width": "16"}, "option 'width' must be an integer >= 1, got '16'"),
        (
            "resnet50",
            {"layout": "v15"},
            "option 'layout' must be one of 'v1', 'v1.5', got 'v15' (did you mean 'v1.5'?)",
        ),
        ("resnet50", {"layout": 1.5}, "option 'layout' must be one of 'v1', 'v1.5', got 1.5"),
        (
            "resnet18",
            {"small_input": "yes"},
            "option 'small_input' must be true or false, got 'yes'",
        ),
        (
            "resnet18",
            {"zero_init_residual": 1},
            "option 'zero_init_residual' must be true or false, got 1",
        ),
        (
            "convnet_tiny",
            {"width": 3},
            "option 'width' must be an integer >= 2 and a multiple of 2, got 3",
        ),
        ("mlp_tiny", {"input_size": -28}, "option 'input_size' must be an integer >= 1, got -28"),
        ("vgg11", {"num_classes": 0}, "option 'num_classes' must be an integer >= 1, got 0"),
        ("vgg11", {"in_channels": None}, "option 'in_channels' must be an integer >= 1, got None"),
    ],
)
def test_bad_value(name, kwargs, message):
    kwargs = {"num_classes": 10, "in_channels": 3, **kwargs}
    with pytest.raises(ConfigError) as err:
        create_model(name, **kwargs)
    assert str(err.value) == f"model '{name}' {message}"


def test_numpy_integers_are_accepted():
    model = create_model("resnet_tiny", num_classes=10, in_channels=3, width=np.int64(6))
    assert model.conv1.out_channels == 6


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_train_one_step(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
