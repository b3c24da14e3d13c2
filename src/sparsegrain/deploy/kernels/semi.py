"""Sparse execution on NVIDIA GPUs: 2:4 weights on semi-structured sparse tensor cores.

A layer whose ``(K, C*R*S)`` weight keeps at most 2 of every 4 consecutive inputs (``nm:2:4``)
runs on ``torch.sparse`` semi-structured tensors; a Conv2d (groups=1, zero padding) by im2col.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import candidates, conv_supported, im2col, set_module

SEMI_PAD = 64  # pad the (K, D) weight to multiples of 64: meets both backends' shape minimums


def is_2_4(w2: Tensor) -> bool:
    """True when every 4 consecutive weights along the input axis hold at most 2 non-zeros."""
    return w2.shape[1] % 4 == 0 and bool(((w2 != 0).reshape(w2.shape[0], -1, 4).sum(-1) <= 2).all())


class _SemiStructured(nn.Module):
    """``y = x @ W^T + b`` with ``W (K, D)`` as a ``torch.sparse`` semi-structured tensor.

    The weight is zero-padded to multiples of ``SEMI_PAD`` (zeros keep the 2:4 pattern), the
    input to the padded width; the product runs in ``dtype`` (float16 or bfloat16: the 2:4
    tensor-core formats) and comes back in the input's dtype.
    """

    def __init__(self, weight2d: Tensor, bias: Tensor | None, dtype: torch.dtype):
        super().__init__()
        k, d = weight2d.shape
        self.out_dim, self.in_dim, self.dtype = k, d, dtype
        kp, dp = -(-k // SEMI_PAD) * SEMI_PAD, -(-d // SEMI_PAD) * SEMI_PAD
        padded = F.pad(weight2d.detach().to(dtype), (0, dp - d, 0, kp - k)).contiguous()
        semi = torch.sparse.to_sparse_semi_structured(padded)
        self.weight_semi = nn.Parameter(semi, requires_grad=False)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def _linear(self, x2: Tensor) -> Tensor:
        pad = self.weight_semi.shape[1] - self.in_dim
        y = F.linear(F.pad(x2.to(self.dtype), (0, pad)), self.weight_semi)[:, : self.out_dim]
        y = y.to(x2.dtype)
        return y if self.bias is None else y + self.bias


class SemiStructuredLinear(_SemiStructured):
    """``nn.Linear`` with a 2:4 weight on sparse tensor cores."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.float16):
        super().__init__(linear.weight, linear.bias, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._linear(x.reshape(-1, self.in_dim)).reshape(*x.shape[:-1], self.out_dim)


class SemiStructuredConv2d(_SemiStructured):
    """``nn.Conv2d`` (groups=1, zero padding) by im2col with a 2:4 ``(K, C*R*S)`` weight."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype = torch.float16):
        reason = conv_supported(conv)
        if reason is not None:
            raise ValueError(f"SemiStructuredConv2d cannot run this layer: {reason}")
        super().__init__(conv.weight.reshape(conv.out_channels, -1), conv.bias, dtype)
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = (0, 0) if isinstance(conv.padding, str) else conv.padding

    def forward(self, x: Tensor) -> Tensor:
        batched = x.dim() == 4
        cols, n, ho, wo = im2col(x if batched else x.unsqueeze(0), self)
        y = self._linear(cols.transpose(1, 2).reshape(n * ho * wo, self.in_dim))  # (N*L, K)
        y = y.reshape(n, ho * wo, self.out_dim).transpose(1, 2).reshape(n, -1, ho, wo)
        return y if batched else y.squeeze(0)


def to_semi_structured(
    model: nn.Module, dtype: torch.dtype = torch.float16
) -> tuple[nn.Module, dict]:
    """A copy of ``model`` (on a CUDA device) in which every Linear and Conv2d whose weight is
    2:4 along the input axis (``nm:2:4``) runs on PyTorch's semi-structured sparse tensors.

    Needs an NVIDIA GPU with sparse tensor cores (compute capability 8.0+); raises RuntimeError
    without CUDA. Report: ``layers`` (``name``, ``kind``, ``shape``, ``chosen``
    ("semi-structured" or "dense"), ``note``) and ``replaced``.
    """
    if not torch.cuda.is_available():
        raise RuntimeError(
            "to_semi_structured needs an NVIDIA GPU: torch.cuda.is_available() is False"
        )
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    model = copy.deepcopy(model)
    rows = []
    for name, module in candidates(model):
        w2 = module.weight.detach().reshape(module.weight.shape[0], -1)
        row = {"name": name, "kind": type(module).__name__, "shape": list(module.weight.shape)}
        reason = conv_supported(module) if isinstance(module, nn.Conv2d) else None
        if reason is None and not w2.is_cuda:
            reason = "weight is not on a CUDA device (call model.cuda() first)"
        if reason is None and not is_2_4(w2):
            reason = "weight is not 2:4 along the input axis"
        if reason is None:
            cls = SemiStructuredLinear if isinstance(module, nn.Linear) else SemiStructuredConv2d
            try:
                set_module(model, name, cls(module, dtype))
            except RuntimeError as e:  # a GPU or dtype the semi-structured kernels refuse
                reason = str(e).splitlines()[0]
        row.update(chosen="dense" if reason else "semi-structured", note=reason or "")
        rows.append(row)
    replaced = [r["name"] for r in rows if r["chosen"] != "dense"]
    return model, {"layers": rows, "replaced": replaced}
