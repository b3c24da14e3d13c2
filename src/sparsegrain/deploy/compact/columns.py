"""Shape (column) sparsity run as im2col with the zero columns left out (StructADMM sec. 4).

A conv ``(K, C, R, S)`` is the GEMM ``W (K, C*R*S) @ cols (C*R*S, Ho*Wo)``; when a whole column
``W[:, c, r, s]`` is zero for every filter, its row of ``cols`` is never needed.
``ColumnSparseConv2d`` gathers only the kept rows straight from the padded input (one
``index_select`` with a precomputed index per input size) and multiplies by the ``(K, n_kept)``
weight. The result equals ``F.conv2d`` with the zero columns, up to float summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ColumnSparseConv2d(nn.Module):
    """A ``Conv2d`` (``groups=1``, zero padding) that computes only its non-zero GEMM columns.

    ``columns``: indices into the flattened ``(C, R, S)`` axis of the kept columns; ``weight``:
    ``(K, len(columns))``."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("ColumnSparseConv2d: needs an nn.Conv2d with groups=1, zero padding")
        if isinstance(conv.padding, str):
            raise ValueError("ColumnSparseConv2d: string padding ('same') is not supported")
        k, c, r, s = conv.weight.shape
        w = conv.weight.detach().reshape(k, c * r * s)
        cols = (w != 0).any(dim=0).nonzero().flatten()
        if cols.numel() == 0:
            cols = torch.zeros(1, dtype=torch.long)  # keep one (zero) column: shapes stay valid
        self.in_channels, self.out_channels = c, k
        self.kernel_size, self.stride = (r, s), tuple(conv.stride)
        self.padding, self.dilation = tuple(conv.padding), tuple(conv.dilation)
        self.register_buffer("columns", cols)
        self.weight = nn.Parameter(w[:, cols].clone())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        self._cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def extra_repr(self) -> str:
        total = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, columns={self.columns.numel()}/{total}"
        )

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        (ph, pw), (dh, dw), (sh, sw) = self.padding, self.dilation, self.stride
        r, s = self.kernel_size
        return (h + 2 * ph - dh * (r - 1) - 1) // sh + 1, (w + 2 * pw - dw * (s - 1) - 1) // sw + 1

    def _gather_index(self, h: int, w: int, device) -> torch.Tensor:
        """(n_kept * Ho * Wo,) positions in the flattened padded input ``(C, Hp, Wp)``."""
        key = (h, w, str(device))
        if key not in self._cache:
            (ph, pw), (dh, dw), (sh, sw) = self.padding, self.dilation, self.stride
            r, s = self.kernel_size
            hp, wp = h + 2 * ph, w + 2 * pw
            ho, wo = self._out_size(h, w)
            col = self.columns.cpu()
            c, rs = col // (r * s), col % (r * s)
            row0 = (rs // s) * dh  # (n,) kernel row offset
            col0 = (rs % s) * dw
            oh = torch.arange(ho) * sh
            ow = torch.arange(wo) * sw
            ih = row0[:, None, None] + oh[None, :, None]  # (n, Ho, 1)
            iw = col0[:, None, None] + ow[None, None, :]  # (n, 1, Wo)
            idx = c[:, None, None] * (hp * wp) + ih * wp + iw  # (n, Ho, Wo)
            self._cache[key] = idx.reshape(-1).to(device)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(
                f"ColumnSparseConv2d input channels\n  expected: {self.in_channels}\n  got: {c}"
            )
        ph, pw = self.padding
        xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        ho, wo = self._out_size(h, w)
        idx = self._gather_index(h, w, x.device)
        cols = xp.reshape(n, -1).index_select(1, idx).view(n, -1, ho * wo)  # (N, n_kept, L)
        out = torch.matmul(self.weight, cols)  # (N, K, L)
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.view(n, self.out_channels, ho, wo)


def columnize_(model: nn.Module, min_sparsity: float = 0.5) -> list[str]:
    """Replace, in place, every plain ``Conv2d`` (groups 1, zero padding) whose fraction of all-
    zero GEMM columns is at least ``min_sparsity`` by a ``ColumnSparseConv2d``; returns the
    names replaced."""
    done = []
    for name, m in list(model.named_modules()):
        if type(m) is not nn.Conv2d or m.groups != 1 or m.padding_mode != "zeros":
            continue
        if isinstance(m.padding, str):
            continue
        w = m.weight.detach().reshape(m.weight.shape[0], -1)
        zero_cols = float((w == 0).all(dim=0).float().mean())
        if zero_cols >= min_sparsity and zero_cols > 0:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, ColumnSparseConv2d(m))
            done.append(name)
    return done
