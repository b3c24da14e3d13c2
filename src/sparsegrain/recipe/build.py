"""A recipe's model: the zoo model its ``model`` section names, sized for the data."""

from __future__ import annotations

from torch import nn

from ..models import create_model
from .load import Recipe


def build_model(recipe: Recipe, num_classes: int, in_channels: int) -> nn.Module:
    m = recipe.model
    return create_model(
        m.name,
        num_classes=m.num_classes or num_classes,
        in_channels=m.in_channels or in_channels,
        **m.options,
    )
