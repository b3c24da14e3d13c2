"""Around a oneDNN CPU kernel that corrupts memory in training.

oneDNN 3.12 (the CPU convolution library of torch 2.13) computes the weight gradient of a 1x1
convolution with a stride above 1 and fewer than 8 input channels per group out of bounds on
CPUs without AVX-512 (its ``jit_avx2_1x1_convolution_bwd_weights`` kernel, picked whenever the
activations are channels_last, which PyTorch chooses for 1x1 convs even in a contiguous model):
the heap is corrupted, and the process aborts or, worse, goes on. Such layers are the
downsampling shortcuts of narrow ResNets (the zoo's ``resnet_tiny``: 4 -> 8 channels).

A 1x1 kernel reads one input pixel per output pixel, so the same layer is the input subsampled
at the stride and convolved at stride 1: the same products and sums, through kernels without
the fault. ``guard_pointwise_strided_`` turns each such ``nn.Conv2d`` into a
``SubsampledConv2d``, a subclass with that forward; nothing else about the module changes
(parameters, state_dict, masks, what the analyses and compaction read). ``create_model``
applies it to every model it builds, and ``sparsify_`` to the model it is given, on every CPU
alike (the results do not depend on the machine's instruction set).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SubsampledConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` with a 1x1 kernel and a stride above 1, computed as its (padded) input
    subsampled at the stride and convolved at stride 1."""

    def forward(self, x: Tensor) -> Tensor:
        ph, pw = (0, 0) if self.padding == "valid" else self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias, 1, 0, 1, self.groups)


def pointwise_strided(model: nn.Module) -> list[str]:
    """Names of the plain ``nn.Conv2d`` the fault concerns: 1x1 kernel, a stride above 1, fewer
    than 8 input channels per group."""
    return [
        name
        for name, m in model.named_modules()
        if type(m) is nn.Conv2d
        and tuple(m.kernel_size) == (1, 1)
        and max(m.stride) > 1
        and m.in_channels // m.groups < 8
        and m.padding_mode == "zeros"
    ]


def guard_pointwise_strided_(model: nn.Module) -> list[str]:
    """Make every conv ``pointwise_strided`` names a ``SubsampledConv2d``, in place; returns
    their names."""
    names = pointwise_strided(model)
    for name in names:
        model.get_submodule(name).__class__ = SubsampledConv2d
    return names
