"""``sparsegrain.compact``: the public name of ``sparsegrain.deploy.compact``."""

from .deploy.compact import (
    ColumnSparseConv2d,
    CompactResult,
    LayerChannels,
    columnize_,
    compact,
    load_compact,
    save_compact,
    shrink_,
)

__all__ = [
    "ColumnSparseConv2d",
    "CompactResult",
    "LayerChannels",
    "columnize_",
    "compact",
    "load_compact",
    "save_compact",
    "shrink_",
]
