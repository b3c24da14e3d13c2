"""What the sparse kernels replace, and a Conv2d as a GEMM.

A Conv2d (groups=1, zero padding) runs by im2col: ``unfold`` turns the input ``(N, C, H, W)``
into columns ``(N, C*R*S, Ho*Wo)`` (rows in ``(c, r, s)`` order, the order of the ``(K, C*R*S)``
GEMM view every structure uses), which the ``(K, C*R*S)`` weight multiplies.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv_supported(conv: nn.Module) -> str | None:
    """None if the im2col path (``SparseConv2d``, ``SemiStructuredConv2d``) can run ``conv``, else
    the reason it cannot."""
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not a Conv2d"
    if conv.groups != 1:
        return f"groups={conv.groups} (im2col path needs groups=1)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (needs 'zeros')"
    if isinstance(conv.padding, str) and conv.padding != "valid":
        return f"padding={conv.padding!r} (needs explicit padding or 'valid')"
    return None


def im2col(x: Tensor, conv) -> tuple[Tensor, int, int, int]:
    """``F.unfold`` of a (N, C, H, W) batch with ``conv``'s kernel_size/stride/padding/dilation:
    columns (N, C*R*S, Ho*Wo) and N, Ho, Wo."""
    n, _, h, w = x.shape
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    (ph, pw), (dh, dw) = conv.padding, conv.dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    return cols, n, ho, wo


def candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every named Linear and Conv2d of ``model`` (the model itself excluded)."""
    return [(n, m) for n, m in model.named_modules() if n and isinstance(m, (nn.Linear, nn.Conv2d))]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` of ``model`` by ``new``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
