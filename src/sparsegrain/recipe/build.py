"""A recipe's model: the zoo model (or the model users bring) its ``model`` section names, sized
for the data."""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ConfigError
from ..data.catalog import token_shape
from ..models import create_model
from ..models.external import check_tokens_fit, external_inputs, external_source
from .load import Recipe

# The most parameters a recipe's model may have (8 GiB of float32 weights, three times that with
# gradients and momentum): a width typed one digit too long fails here, not in the allocator.
MAX_PARAMETERS = 2**31


def build_model(recipe: Recipe, num_classes: int, in_channels: int | None) -> nn.Module:
    """The recipe's model for data of ``num_classes`` classes and ``in_channels`` channels
    (None: the data are token ids, ``DataBundle.in_channels`` of a token dataset).

    An explicit ``model.num_classes`` or ``model.in_channels`` must agree with the data, the
    model must read what the data hold (images or token ids), and it must have at most
    ``MAX_PARAMETERS`` parameters (counted on the meta device, before any memory is
    allocated); else a ConfigError naming both values.
    """
    m = recipe.model
    dataset = getattr(recipe.data, "name", None) or "the data"
    checks = [("num_classes", m.num_classes, num_classes, "classes")]
    if in_channels is not None:
        checks.append(("in_channels", m.in_channels, in_channels, "channels"))
    elif m.in_channels is not None:
        raise ConfigError(
            f"model.in_channels: does not apply to dataset '{dataset}', whose inputs are token "
            "ids; leave it unset"
        )
    for key, given, actual, what in checks:
        if given is not None and given != actual:
            raise ConfigError(
                f"model.{key}: {given} disagrees with dataset '{dataset}', which has {actual} "
                f"{what}; set model.{key} to {actual} or leave it unset"
            )
    _check_inputs(recipe, in_channels is None, dataset)
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, **m.options)
    _check_size(m.name, kwargs)
    return create_model(m.name, **kwargs)


def _check_inputs(recipe: Recipe, tokens: bool, dataset: str) -> None:
    """Refuse a model that reads images on token data, or the other way round."""
    m = recipe.model
    reads = external_inputs(m.name, m.options) if external_source(m.name) else "images"
    if reads == "tokens" and not tokens:
        raise ConfigError(
            f"model '{m.name}' is a text model (it reads token ids) and dataset '{dataset}' "
            "holds images; use a token dataset (data.name synthetic-tokens) or an image model"
        )
    if reads == "images" and tokens:
        raise ConfigError(
            f"model '{m.name}' reads images and dataset '{dataset}' holds token ids; use a "
            "Hugging Face text model (model.name hf:CONFIG.json) or an image dataset"
        )
    if tokens:
        vocab, seq_len, _ = token_shape(recipe.data)
        check_tokens_fit(m.name, m.options, vocab_size=vocab, seq_len=seq_len, dataset=dataset)


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
