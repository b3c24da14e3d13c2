"""``sparsegrain.compact``: the public name of ``sparsegrain.deploy.compact``."""

from .deploy.compact import (
    CompactResult,
    LayerChannels,
    compact,
    load_compact,
    save_compact,
    shrink_,
)

__all__ = [
    "CompactResult",
    "LayerChannels",
    "compact",
    "load_compact",
    "save_compact",
    "shrink_",
]
