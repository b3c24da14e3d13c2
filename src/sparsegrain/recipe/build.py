"""A recipe's model: the zoo model its ``model`` section names, sized for the data."""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ConfigError
from ..models import create_model
from .load import Recipe

# The most parameters a recipe's model may have (8 GiB of float32 weights, three times that with
# gradients and momentum): a width typed one digit too long fails here, not in the allocator.
MAX_PARAMETERS = 2**31


def build_model(recipe: Recipe, num_classes: int, in_channels: int) -> nn.Module:
    """The recipe's model for data of ``num_classes`` classes and ``in_channels`` channels.

    An explicit ``model.num_classes`` or ``model.in_channels`` must agree with the data, and the
    model must have at most ``MAX_PARAMETERS`` parameters (counted on the meta device, before
    any memory is allocated); else a ConfigError naming both values.
    """
    m = recipe.model
    dataset = getattr(recipe.data, "name", None) or "the data"
    for key, given, actual, what in (
        ("num_classes", m.num_classes, num_classes, "classes"),
        ("in_channels", m.in_channels, in_channels, "channels"),
    ):
        if given is not None and given != actual:
            raise ConfigError(
                f"model.{key}: {given} disagrees with dataset '{dataset}', which has {actual} "
                f"{what}; set model.{key} to {actual} or leave it unset"
            )
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, **m.options)
    _check_size(m.name, kwargs)
    return create_model(m.name, **kwargs)


def _check_size(name: str, kwargs: dict) -> None:
    try:
        with torch.device("meta"):
            probe = create_model(name, **kwargs)
    except ConfigError:
        raise
    except Exception:  # a factory from outside that cannot build on meta: no count
        return
    count = sum(p.numel() for p in probe.parameters())
    if count > MAX_PARAMETERS:
        options = ", ".join(f"{k} {v}" for k, v in kwargs.items())
        raise ConfigError(
            f"model: '{name}' with {options} has {count} parameters, more than the "
            f"{MAX_PARAMETERS} allowed; make model.width (or another size option) smaller"
        )
