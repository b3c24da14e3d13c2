"""Sparse execution: PyTorch CSR/BSR kernels on CPU, chosen per layer by measurement (``cpu``),
and 2:4 semi-structured kernels on NVIDIA GPUs (``semi``)."""

from .cpu import (
    BLOCKS,
    FORMATS,
    MIN_BLOCK_FILL,
    SparseConv2d,
    SparseLinear,
    Timer,
    block_fill,
    choose_block,
    format_kernel_report,
    sparse_module,
    time_call,
    time_modules,
    to_sparse,
    to_sparse_kernels,
)
from .layers import conv_supported, im2col
from .semi import (
    SEMI_PAD,
    SemiStructuredConv2d,
    SemiStructuredLinear,
    is_2_4,
    to_semi_structured,
)

__all__ = [
    "BLOCKS",
    "FORMATS",
    "MIN_BLOCK_FILL",
    "SEMI_PAD",
    "SemiStructuredConv2d",
    "SemiStructuredLinear",
    "SparseConv2d",
    "SparseLinear",
    "Timer",
    "block_fill",
    "choose_block",
    "conv_supported",
    "format_kernel_report",
    "im2col",
    "is_2_4",
    "sparse_module",
    "time_call",
    "time_modules",
    "to_semi_structured",
    "to_sparse",
    "to_sparse_kernels",
]
