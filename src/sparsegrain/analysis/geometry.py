"""The shape of one weight's use in a forward pass: ``LayerGeometry`` and ``FunctionalOp``.

A ``LayerGeometry`` is what the FLOP counter (``flops``) and the accelerator model
(``accelerator``) need of a Conv1d / Conv2d / Linear call, or of a parameter used as the weight of
a functional call, per example; a ``FunctionalOp`` is a product of two activations. Both are made
by ``flops.profile`` (layers by forward hooks, functional calls by ``profiling.Recorder``) from
the helpers here, which read shapes and conv arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..structures import shape_4d

Pair = tuple[int, int]


@dataclass(frozen=True)
class LayerGeometry:
    """One Conv1d / Conv2d / Linear call, per example: shapes, conv parameters, input density.

    ``in_shape`` ``(C, H, W)`` and ``out_shape`` ``(K, Ho, Wo)``; ``stride``, ``padding``
    (top, left: the amount before the input; PyTorch's ``"same"`` puts the smaller half first),
    ``dilation`` as ``(h, w)`` pairs; ``act_density`` = non-zero fraction of the layer's input
    activations over the whole example batch (padding not included). A module called more than
    once is profiled at its first call; ``calls`` says how often it ran.
    """

    name: str
    kind: str  # "conv1d" | "conv2d" | "linear"
    weight_shape: tuple[int, ...]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    act_density: float = 1.0
    padding_mode: str = "zeros"
    calls: int = 1

    @property
    def kernel(self) -> Pair:
        _, _, r, s = shape_4d(self.weight_shape)
        return (r, s)


@dataclass(frozen=True)
class FunctionalOp:
    """MACs per example of products between two activations, made by module ``name`` ("" for
    the model's own forward) with torch function ``op``, at the module's first call."""

    name: str
    op: str
    macs: int
    calls: int = 1


def pair(v, fill: int) -> Pair:
    """Conv1d's ``(x,)`` or ``x`` -> ``(fill, x)``; Conv2d's ``(a, b)`` as is."""
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    return (fill, int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


def plane(x: Tensor, kind: str) -> tuple[int, int, int]:
    """Per-example ``(C, H, W)`` of a layer's input or output tensor."""
    if kind == "linear":
        positions = math.prod(x.shape[1:-1]) if x.dim() >= 2 else 1
        return (int(x.shape[-1]), 1, int(positions))
    if kind == "conv1d":
        return (int(x.shape[-2]), 1, int(x.shape[-1]))
    return tuple(int(d) for d in x.shape[-3:])  # type: ignore[return-value]


def conv_padding(padding, kernel: Pair, dilation: Pair) -> Pair:
    """``(top, left)`` zero padding of a conv given its ``padding`` argument."""
    if isinstance(padding, str):  # "valid" or "same"
        if padding == "valid":
            return (0, 0)
        return (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
    return pair(padding, 0)


def density(x: Tensor) -> float:
    return float(torch.count_nonzero(x)) / x.numel() if x.numel() else 0.0
