"""Recipes: typed ``model`` / ``train`` / ``sparsity`` sections (``config``), YAML and ``--set``
(``load``), and the model a recipe names (``build``)."""

from .config import ModelConfig, SparsityConfig, TrainConfig
from .load import Recipe, load_recipe

__all__ = ["ModelConfig", "Recipe", "SparsityConfig", "TrainConfig", "load_recipe"]
