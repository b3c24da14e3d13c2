"""Inference form of a compacted model: BatchNorms folded into the convs before them.

A BatchNorm ``B`` in eval mode is the per-channel affine map ``y = s * x + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - s * running_mean``. When ``B`` alone
reads the output of a Conv/Linear ``L`` (``L`` and ``B`` each called once, ``B``'s one argument
is ``L``'s output and nothing else reads it), ``B(L(x)) = (s * W) x + (s * b + t)``: ``L`` takes
the scaled weight and the new bias and ``B`` becomes ``nn.Identity``. Only PyTorch's own
BatchNorm forward is folded (a subclass that adds an activation, such as timm's
``BatchNormAct2d``, is left as it is). The pairs are read off the model's graph (``graph.trace``).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...core.errors import ConfigError
from ...graph import is_conv1d_transposed, trace

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def foldable_pairs(model: nn.Module, example_input) -> list[tuple[str, str]]:
    """``(layer, batchnorm)`` pairs that ``fold_batchnorms_`` folds (rule in the module doc)."""
    nodes = trace(model, example_input).nodes
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in nodes if n.op == "call_module")
    pairs = []
    for node in nodes:
        m = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(m, LAYERS) or is_conv1d_transposed(m) or calls[node.target] != 1:
            continue
        if len(node.users) != 1 or node.users[0].op != "call_module":
            continue
        user = node.users[0]
        bn = modules.get(user.target)
        plain = isinstance(bn, _BatchNorm) and type(bn).forward is _BatchNorm.forward
        if not plain or calls[user.target] != 1 or tuple(user.args) != (node,) or user.kwargs:
            continue
        if bn.running_mean is None or bn.running_var is None:
            continue
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.out_channels != bn.num_features:
            continue
        pairs.append((node.target, user.target))
    return pairs


@torch.no_grad()
def fold_pair_(model: nn.Module, layer: str, norm: str) -> None:
    """Fold BatchNorm ``norm`` into ``layer`` (see the module doc); ``norm`` becomes Identity."""
    m, bn = model.get_submodule(layer), model.get_submodule(norm)
    if not isinstance(m, LAYERS) or not isinstance(bn, _BatchNorm):
        raise ConfigError(f"cannot fold '{norm}' into '{layer}': not a layer and a BatchNorm")
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(
        bn.running_var + bn.eps
    )
    shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - scale * bn.running_mean
    w = m.weight.detach()
    shape = (-1,) + (1,) * (w.dim() - 1)
    m.weight = nn.Parameter((w * scale.reshape(shape).to(w)).clone())
    bias = m.bias.detach() if m.bias is not None else torch.zeros_like(scale)
    m.bias = nn.Parameter((bias.to(scale) * scale + shift).to(w.dtype))
    parent, _, child = norm.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())


def fold_batchnorms_(model: nn.Module, example_input) -> list[str]:
    """Fold every foldable BatchNorm of ``model`` (eval mode) into its layer; returns the names
    of the BatchNorms folded (now ``nn.Identity``)."""
    folded = []
    for layer, norm in foldable_pairs(model, example_input):
        fold_pair_(model, layer, norm)
        folded.append(norm)
    return folded


def apply_folds_layout_(model: nn.Module, folded: dict[str, str]) -> None:
    """Give a freshly built model the shape of a folded one (``{batchnorm: layer}``): each
    layer gets a bias and each BatchNorm becomes Identity, so its state dict loads."""
    for norm, layer in folded.items():
        try:
            m = model.get_submodule(layer)
            model.get_submodule(norm)
        except AttributeError:
            raise ConfigError(f"folded '{norm}' into '{layer}': not in this model") from None
        if m.bias is None:
            m.bias = nn.Parameter(m.weight.new_zeros(m.weight.shape[0]))
        parent, _, child = norm.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
