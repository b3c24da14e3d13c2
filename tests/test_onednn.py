"""The guard around oneDNN's CPU fault in the weight gradient of narrow strided 1x1 convs
(core/onednn.py): which convs it takes, that they compute what the plain conv does, and that
training one in channels_last no longer corrupts the heap."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import sparsegrain
from sparsegrain.core.onednn import SubsampledConv2d, guard_pointwise_strided_, pointwise_strided
from sparsegrain.models import create_model


def guarded(m: nn.Module) -> bool:
    return isinstance(m, SubsampledConv2d)


def test_the_zoo_guards_the_narrow_shortcuts_only():
    tiny = create_model("resnet_tiny", num_classes=10, in_channels=1)
    names = ["layer2.0.downsample.0", "layer3.0.downsample.0"]  # 4 -> 8 and 8 -> 16, stride 2
    assert pointwise_strided(tiny) == []  # guarded already: no plain nn.Conv2d left there
    assert [n for n, m in tiny.named_modules() if guarded(m)] == names[:1]
    wide = create_model("resnet20", num_classes=10, in_channels=3)  # shortcuts from 16 channels
    assert pointwise_strided(wide) == [] and not any(guarded(m) for m in wide.modules())


@pytest.mark.parametrize(
    "cin,cout,stride,padding,size,groups",
    [(4, 8, 2, 0, 12, 1), (3, 16, 3, 1, 13, 1), (4, 8, (2, 1), 0, 7, 1), (8, 8, 2, 0, 9, 2)],
)
def test_a_guarded_conv_computes_the_conv(cin, cout, stride, padding, size, groups):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, padding=padding, groups=groups))
    ref = nn.Conv2d(cin, cout, 1, stride=stride, padding=padding, groups=groups)
    ref.load_state_dict(model[0].state_dict())
    assert guard_pointwise_strided_(model) == ["0"] and guarded(model[0])
    conv = model[0]
    x = torch.randn(5, cin, size, size, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out = conv(x)
    with torch.backends.mkldnn.flags(enabled=False):  # the reference through another kernel
        want = ref(x_ref)
        want.square().sum().backward()
    out.square().sum().backward()
    assert out.shape == want.shape
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-5)


def test_sparsify_guards_a_users_model_and_keeps_its_state():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = {"method": "oneshot", "structure": "filter", "target": 0.5}
    sparsegrain.sparsify_(model, recipe, steps_per_epoch=1)
    assert [guarded(m) for m in model] == [False, False, True]
    sparsegrain.finalize_(model)
    assert isinstance(model[2], SubsampledConv2d)
    assert sorted(model.state_dict()) == sorted(before)


@pytest.mark.slow
def test_training_a_narrow_strided_shortcut_in_channels_last_keeps_the_heap_whole():
    # Without the guard this aborted ("corrupted double-linked list") on an AVX2 CPU.
    code = textwrap.dedent(
        """
        import torch
        from torch import nn
        from sparsegrain.core.onednn import guard_pointwise_strided_
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False))
        guard_pointwise_strided_(model)
        model = model.to(memory_format=torch.channels_last)
        x = torch.randn(64, 4, 12, 12).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        for _ in range(30):
            model(x).sum().backward()
        print("whole")
        """
    )
    env = {"MALLOC_CHECK_": "3", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "whole", done.stderr[-500:]
