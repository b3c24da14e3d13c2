"""The structures of DESIGN.md section 2, as small frozen dataclasses over the ``(D, G, E)`` view.

Layer-domain structures (D = 1): fine, vector, kernel, filter, channel, shape, block.
Balanced structures (one quota per domain): window, kernel-quota, nm; combined is two-level.
Shapes are ``(K, C, R, S)``; "GEMM view" is ``(K, C*R*S)`` with columns in (c, r, s) order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from .core import Shape4, Structure, unravel


@dataclass(frozen=True)
class Fine(Structure):
    """fine: one element W[k,c,r,s] per group; domain the layer (unstructured)."""

    name = "fine"
    group = "one element W[k,c,r,s]"
    element_granular = True

    def _fits4(self, shape4: Shape4) -> str | None:
        k, c, r, s = shape4
        if k * c * r * s < 2:
            return "fine needs a weight with at least 2 elements, got 1"
        return None

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        k, c, r, s = shape4
        return (1, k * c * r * s, 1)

    def group_view(self, w4: Tensor) -> Tensor:
        return w4.reshape(1, -1, 1)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        return t.reshape(self._check_view(t, shape4))

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return f"element {unravel(g, shape4)}"


@dataclass(frozen=True)
class Vector(Structure):
    """vector: one kernel row W[k,c,r,:] per group; domain the layer (Mao 1-D)."""

    name = "vector"
    group = "one kernel row W[k,c,r,:] (a single element on 1x1 kernels, i.e. fine)"

    def _fits4(self, shape4: Shape4) -> str | None:
        k, c, r, _ = shape4
        if k * c * r < 2:
            return f"vector needs K*C*R > 1 (more than one kernel row), got {k * c * r}"
        return None

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        k, c, r, s = shape4
        return (1, k * c * r, s)

    def group_view(self, w4: Tensor) -> Tensor:
        k, c, r, s = w4.shape
        return w4.reshape(1, k * c * r, s)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        return t.reshape(self._check_view(t, shape4))

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return f"row {unravel(g, shape4[:3])}"


@dataclass(frozen=True)
class Kernel(Structure):
    """kernel: one kernel W[k,c,:,:] per group; domain the layer (Mao 2-D)."""

    name = "kernel"
    group = "one kernel W[k,c,:,:]"

    def _fits4(self, shape4: Shape4) -> str | None:
        k, c, _, _ = shape4
        if k * c < 2:
            return f"kernel needs K*C > 1 (more than one kernel), got {k * c}"
        return None

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        k, c, r, s = shape4
        return (1, k * c, r * s)

    def group_view(self, w4: Tensor) -> Tensor:
        k, c, r, s = w4.shape
        return w4.reshape(1, k * c, r * s)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        return t.reshape(self._check_view(t, shape4))

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return f"kernel {unravel(g, shape4[:2])}"


@dataclass(frozen=True)
class Filter(Structure):
    """filter: one filter W[k,:,:,:] per group; domain the layer (Mao 3-D, StructADMM)."""

    name = "filter"
    group = "one filter (output channel) W[k,:,:,:]"
    whole_filters = True

    def _fits4(self, shape4: Shape4) -> str | None:
        if shape4[0] < 2:
            return f"filter needs K > 1 (more than one filter), got K={shape4[0]}"
        return None

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        k, c, r, s = shape4
        return (1, k, c * r * s)

    def group_view(self, w4: Tensor) -> Tensor:
        return w4.reshape(1, w4.shape[0], -1)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        return t.reshape(self._check_view(t, shape4))

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return f"filter {g}"


@dataclass(frozen=True)
class Channel(Structure):
    """channel: one input channel W[:,c,:,:] per group; domain the layer (StructADMM channel)."""

    name = "channel"
    group = "one input channel W[:,c,:,:] (in a grouped conv, channel c of every group together)"

    def _fits4(self, shape4: Shape4) -> str | None:
        if shape4[1] < 2:
            return f"channel needs C > 1 (input channels per group), got C={shape4[1]}"
        return None

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        k, c, r, s = shape4
        return (1, c, k * r * s)

    def group_view(self, w4: Tensor) -> Tensor:
        k, c, r, s = w4.shape
        return w4.permute(1, 0, 2, 3).reshape(1, c, k * r * s)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        k, c, r, s = self._check_view(t, shape4)
        return t.reshape(c, k, r, s).permute(1, 0, 2, 3)

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return f"input channel {g}"


@dataclass(frozen=True)
class Shape(Structure):
    """shape: one GEMM column W[:,c,r,s] per group; domain the layer (StructADMM shape)."""

    name = "shape"
    group = "one GEMM column W[:,c,r,s]"

    def _fits4(self, shape4: Shape4) -> str | None:
        _, c, r, s = shape4
        if c * r * s < 2:
            return f"shape needs C*R*S > 1 (more than one column), got {c * r * s}"
        return None

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        k, c, r, s = shape4
        return (1, c * r * s, k)

    def group_view(self, w4: Tensor) -> Tensor:
        k = w4.shape[0]
        return w4.permute(1, 2, 3, 0).reshape(1, -1, k)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        k, c, r, s = self._check_view(t, shape4)
        return t.reshape(c, r, s, k).permute(3, 0, 1, 2)

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return f"column {unravel(g, shape4[1:])}"


@dataclass(frozen=True)
class Window(Structure):
    """window: one element per group; domain each kernel W[k,c,:,:], n of R*S kept in every one."""

    name = "window"
    group = "one element W[k,c,r,s]"
    domain = "each kernel W[k,c,:,:] (the same number n of R*S kept in every kernel)"
    balanced = True
    element_granular = True

    def _fits4(self, shape4: Shape4) -> str | None:
        _, _, r, s = shape4
        if r * s < 2:
            return f"window needs a kernel larger than 1x1, got {r}x{s}"
        return None

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        k, c, r, s = shape4
        return (k * c, r * s, 1)

    def group_view(self, w4: Tensor) -> Tensor:
        k, c, r, s = w4.shape
        return w4.reshape(k * c, r * s, 1)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        return t.reshape(self._check_view(t, shape4))

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return f"element {unravel(d * shape4[2] * shape4[3] + g, shape4)}"

    def domain_label(self, d: int, shape4: Shape4) -> str:
        return f"kernel {unravel(d, shape4[:2])}"


@dataclass(frozen=True)
class KernelQuota(Structure):
    """kernel-quota: one kernel per group; domain each filter, m of C kernels kept in every one."""

    name = "kernel-quota"
    group = "one kernel W[k,c,:,:]"
    domain = "each filter W[k,:,:,:] (the same number m of C kernels kept in every filter)"
    balanced = True

    @property
    def index_group(self) -> Structure:
        """``kernel``: the same kernels, addressed across the layer in ``(k, c)`` order."""
        return Kernel()

    def _fits4(self, shape4: Shape4) -> str | None:
        if shape4[1] < 2:
            return f"kernel-quota needs C > 1 (kernels per filter), got C={shape4[1]}"
        return None

    def layout(self, shape4: Shape4) -> tuple[int, int, int]:
        k, c, r, s = shape4
        return (k, c, r * s)

    def group_view(self, w4: Tensor) -> Tensor:
        k, c, r, s = w4.shape
        return w4.reshape(k, c, r * s)

    def from_group_view(self, t: Tensor, shape4: Sequence[int]) -> Tensor:
        return t.reshape(self._check_view(t, shape4))

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return f"kernel ({d}, {g})"

    def domain_label(self, d: int, shape4: Shape4) -> str:
        return f"filter {d}"


@dataclass(frozen=True)
class Neuron(Filter):
    """neuron: one hidden unit of an MLP, i.e. one output row W[k,:] of its first projection
    (fc1, pwconv1, intermediate.dense) with its bias; domain the layer.

    The group is a whole output channel (as ``filter``, but only for Linear-like weights: a
    Linear, a Hugging Face Conv1D seen as (out, in), or a 1x1 conv), so a dropped neuron is a
    zero row that compaction removes together with the second projection's input column."""

    name = "neuron"
    group = "one MLP hidden unit: the output row W[k,:] of a Linear-like first projection"

    def _fits4(self, shape4: Shape4) -> str | None:
        k, _, r, s = shape4
        if r * s != 1:
            return f"neuron needs a Linear-like weight (K, C) or a 1x1 conv, got kernel {r}x{s}"
        if k < 2:
            return f"neuron needs K > 1 (more than one hidden unit), got K={k}"
        return None

    def group_label(self, d: int, g: int, shape4: Shape4) -> str:
        return f"neuron {g}"
