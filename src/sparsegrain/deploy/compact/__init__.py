"""Physical compaction: remove zeroed filters and channels, rebuild smaller dense layers.

``compact(model, example_input)`` traces the model with ``torch.fx``, finds which tensors share a
channel index (residual streams included) and removes a channel only where that is exact (rule in
``plan.py``), then checks the outputs. ``save_compact`` / ``load_compact`` store the result as
safetensors + JSON, without pickle.
"""

from .core import CompactResult, compact
from .io import load_compact, save_compact
from .plan import LayerChannels
from .rebuild import shrink_

__all__ = [
    "CompactResult",
    "LayerChannels",
    "compact",
    "load_compact",
    "save_compact",
    "shrink_",
]
