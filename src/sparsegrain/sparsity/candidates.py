"""Which tensors of a model can be pruned at all: the candidates that layer selection chooses from.

Candidates are Conv1d/Conv2d and Linear modules, Hugging Face ``Conv1D`` (type ``linear``; its
weight is stored ``(in, out)``) and the fused ``in_proj_weight`` of an ``nn.MultiheadAttention``
(type ``linear``, named ``<module>.in_proj_weight``: a Parameter of the attention module, not of
a Linear). Names are the module paths of ``named_modules``, in model order.
"""

from __future__ import annotations

from torch import nn

from .attention import is_conv1d

LAYER_TYPES = {"conv": (nn.Conv1d, nn.Conv2d), "linear": (nn.Linear,)}


def is_candidate(module: nn.Module, types=("conv", "linear")) -> bool:
    """Whether ``module``'s ``weight`` is a candidate of these layer types."""
    classes = tuple(c for t in types for c in LAYER_TYPES[t])
    return isinstance(module, classes) or ("linear" in types and is_conv1d(module))


def candidate_layers(model: nn.Module, types=("conv", "linear")) -> list[tuple[str, nn.Module]]:
    """The modules whose ``weight`` is a candidate (Conv, Linear, Hugging Face Conv1D)."""
    return [(n, m) for n, m in model.named_modules() if is_candidate(m, types)]


def candidate_tensors(
    model: nn.Module, types=("conv", "linear")
) -> list[tuple[str, nn.Module, str]]:
    """``(layer name, module, tensor name)`` of every candidate in model order: the modules of
    ``candidate_layers`` (tensor ``weight``) and, for type ``linear``, the fused
    ``in_proj_weight`` of every ``nn.MultiheadAttention`` (named ``<module>.in_proj_weight``)."""
    out = []
    for n, m in model.named_modules():
        if is_candidate(m, types):
            out.append((n, m, "weight"))
        elif (
            "linear" in types
            and isinstance(m, nn.MultiheadAttention)
            and isinstance(m.in_proj_weight, nn.Parameter)
        ):
            out.append((join_name(n, "in_proj_weight"), m, "in_proj_weight"))
    return out


def join_name(a: str, b: str) -> str:
    """``a.b``, or whichever of the two is not empty (the root module's name is ``""``)."""
    return f"{a}.{b}" if a and b else a or b
