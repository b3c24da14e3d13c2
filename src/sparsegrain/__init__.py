"""sparsegrain: structured sparse training, and proof of what the structure is worth.

``sparsify_(model, recipe, steps_per_epoch=..., optimizer=...)`` attaches structures and masks
and returns the training-side handle; ``finalize_(model)`` bakes zeros into plain weights.
The packages, lowest layer first, are described in ARCHITECTURE.md; ``sparsegrain.structures``,
``methods``, ``models``, ``analysis`` and ``compact`` are loaded on first use.
"""

import importlib

from .core.errors import ConfigError
from .core.version import VERSION
from .recipe.load import Recipe, load_recipe
from .sparsity.handle import Sparsifier, finalize_, sparsify_

__version__ = VERSION

_LAZY = ("analysis", "compact", "data", "deploy", "methods", "models", "structures")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sparsegrain' has no attribute '{name}'")


__all__ = ["sparsify_", "finalize_", "Sparsifier", "load_recipe", "Recipe", "ConfigError"]
