"""What a classifier's forward pass returns, reduced to its logits.

The zoo's models return a ``(N, classes)`` tensor. Models users bring do not always: a Hugging
Face model returns a ``ModelOutput`` (a mapping with a ``logits`` entry), torchvision's
GoogLeNet and Inception v3 return a named tuple ``(logits, aux_logits)`` in training mode. The
loop and every analysis go through ``logits_of`` so that they all read the same tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .errors import ConfigError

__all__ = ["logits_of"]


def logits_of(output: Any) -> Tensor:
    """The logits tensor of a model's output.

    - a tensor: itself;
    - a mapping (a Hugging Face ``ModelOutput`` included) or an object with a ``logits``
      attribute: its ``logits`` tensor;
    - a tuple or list: its first element that is a tensor (the main head before auxiliary ones).

    Anything else is a ConfigError naming the type found.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        found = output.get("logits")
        if isinstance(found, Tensor):
            return found
        keys = ", ".join(repr(str(k)) for k in output) or "none"
        raise ConfigError(
            f"the model returned a {type(output).__name__} without a 'logits' tensor "
            f"(keys: {keys}); a classifier must return logits, a mapping with 'logits', or a "
            "tuple whose first tensor is the logits"
        )
    found = getattr(output, "logits", None)
    if isinstance(found, Tensor):
        return found
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    raise ConfigError(
        f"the model returned a {type(output).__name__}, not logits; a classifier must return "
        "a tensor, a mapping with 'logits', or a tuple whose first tensor is the logits"
    )
