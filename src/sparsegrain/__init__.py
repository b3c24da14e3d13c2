"""sparsegrain: structured sparse training, and proof of what the structure is worth.

``sparsify_(model, recipe, steps_per_epoch=..., optimizer=...)`` attaches structures and masks
and returns the training-side handle; ``finalize_(model)`` bakes zeros into plain weights.
"""

from .api import Sparsifier, finalize_, sparsify_
from .errors import ConfigError
from .recipe import Recipe, load_recipe

__version__ = "0.1.0"

__all__ = ["sparsify_", "finalize_", "Sparsifier", "load_recipe", "Recipe", "ConfigError"]
