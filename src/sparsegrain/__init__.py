"""sparsegrain: structured sparse training, and proof of what the structure is worth.

``sparsify_(model, recipe, steps_per_epoch=..., optimizer=...)`` attaches structures and masks
and returns the training-side handle; ``finalize_(model)`` bakes zeros into plain weights.
The packages, lowest layer first, are described in ARCHITECTURE.md. Every name here is loaded
on first use, so importing one module of the package loads only what that module needs.
"""

import importlib

from .core.version import VERSION

__version__ = VERSION

# public name -> the module that defines it (None: the name is a subpackage)
_NAMES = {
    "sparsify_": "sparsity.handle",
    "finalize_": "sparsity.handle",
    "Sparsifier": "sparsity.handle",
    "load_recipe": "recipe.load",
    "Recipe": "recipe.load",
    "ConfigError": "core.errors",
    **dict.fromkeys(("analysis", "compact", "data", "deploy", "methods", "models"), None),
    **dict.fromkeys(("structures", "recipe", "sparsity", "train", "runs", "core"), None),
}


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'sparsegrain' has no attribute '{name}'")
    module = _NAMES[name]
    if module is None:
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])


__all__ = ["sparsify_", "finalize_", "Sparsifier", "load_recipe", "Recipe", "ConfigError"]
