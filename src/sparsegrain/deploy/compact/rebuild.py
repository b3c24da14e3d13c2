"""Rebuild layers smaller: the kept output/input channels of a Conv, Linear or BatchNorm.

``shrink_(model, layers)`` replaces each named module by a new module of the same type with the
kept channels (weights, bias, running statistics sliced); every other attribute (kernel, stride,
padding, dilation, eps, momentum) is the original's. The model's own ``forward`` then runs as
before on fewer channels, so a compacted model keeps its class and its module names. Loading a
compacted file is ``shrink_`` on a freshly built model followed by ``load_state_dict``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...core.errors import ConfigError
from ...core.fx import CONVS
from ...graph import is_conv1d_transposed
from .plan import LayerChannels

CHANNELS_LAST = torch.channels_last


def _index(idx: list[int] | None, size: int, what: str) -> torch.Tensor:
    if idx is None:
        return torch.arange(size)
    t = torch.tensor(idx, dtype=torch.long)
    if t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= size or t.unique().numel() != len(idx):
        raise ConfigError(f"{what}: kept channel indices must be distinct and in [0, {size})")
    return t


def _resized(name: str, m: nn.Module, spec: LayerChannels) -> nn.Module:
    kind = type(m)
    depthwise = isinstance(m, CONVS) and m.groups == m.in_channels == m.out_channels
    if isinstance(m, CONVS) and m.groups != 1 and not depthwise:
        raise ConfigError(f"layer '{name}': grouped convs are not resized")
    if isinstance(m, CONVS) and spec.kind == "conv":
        out = _index(spec.out, m.out_channels, f"layer '{name}' out")
        inp = out if depthwise else _index(spec.inp, m.in_channels, f"layer '{name}' in")
        new = copy.copy(m)  # same class and attributes; new parameters below
        new._parameters = dict(m._parameters)
        new.in_channels, new.out_channels = len(inp), len(out)
        new.groups = len(out) if depthwise else 1
        w = m.weight.detach()[out] if depthwise else m.weight.detach()[out][:, inp]
        new.weight = nn.Parameter(w.clone(), requires_grad=m.weight.requires_grad)
        if spec.bias:
            b = m.bias.detach()[out].clone() if m.bias is not None else w.new_zeros(len(out))
            new.bias = nn.Parameter(b)
        else:
            new.bias = None
        _keep_layout(m, new)
        return new
    elif is_conv1d_transposed(m) and spec.kind == "linear":
        out = _index(spec.out, m.weight.shape[1], f"layer '{name}' out")
        inp = _index(spec.inp, m.weight.shape[0], f"layer '{name}' in")
        new = copy.copy(m)
        new._parameters = dict(m._parameters)
        new.nf = len(out)
        new.weight = nn.Parameter(m.weight.detach()[inp][:, out].clone())
        b = m.bias.detach()[out].clone() if m.bias is not None else m.weight.new_zeros(len(out))
        new.bias = nn.Parameter(b)
        return new
    elif isinstance(m, nn.Linear) and spec.kind == "linear":
        out = _index(spec.out, m.out_features, f"layer '{name}' out")
        inp = _index(spec.inp, m.in_features, f"layer '{name}' in")
        new = copy.copy(m)
        new._parameters = dict(m._parameters)
        new.in_features, new.out_features = len(inp), len(out)
        new.weight = nn.Parameter(m.weight.detach()[out][:, inp].clone())
        if spec.bias:
            b = m.bias.detach()[out].clone() if m.bias is not None else m.weight.new_zeros(len(out))
            new.bias = nn.Parameter(b)
        else:
            new.bias = None
        return new
    elif isinstance(m, _BatchNorm) and spec.kind == "norm":
        return _resized_norm(name, m, spec)
    else:
        raise ConfigError(f"layer '{name}': a {kind.__name__} cannot be resized as '{spec.kind}'")
    raise AssertionError("unreachable")


def _keep_layout(m: nn.Module, new: nn.Module) -> None:
    w = m.weight
    if w.dim() == 4 and not w.is_contiguous() and w.is_contiguous(memory_format=CHANNELS_LAST):
        new.weight.data = new.weight.data.contiguous(memory_format=CHANNELS_LAST)


def _resized_norm(name: str, m: nn.Module, spec: LayerChannels) -> nn.Module:
    """A copy of the BatchNorm (its class, subclasses such as timm's ``BatchNormAct2d``
    included, and every attribute) with the kept channels of its tensors."""
    keep = _index(spec.out, m.num_features, f"norm '{name}'")
    new = copy.copy(m)
    new._parameters, new._buffers = dict(m._parameters), dict(m._buffers)
    new.num_features = len(keep)
    for key in ("weight", "bias"):
        if getattr(m, key, None) is not None:
            setattr(new, key, nn.Parameter(getattr(m, key).detach()[keep].clone()))
    for key in ("running_mean", "running_var"):
        if getattr(m, key, None) is not None:
            new._buffers[key] = getattr(m, key).detach()[keep].clone()
    return new


def _resized_param(name: str, model: nn.Module, spec: LayerChannels) -> None:
    parent_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(parent_name) if parent_name else model
    t = getattr(owner, attr)
    keep = _index(spec.out, t.shape[spec.axis], f"tensor '{name}'")
    sliced = t.detach().index_select(spec.axis, keep.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(owner, attr, nn.Parameter(sliced, requires_grad=t.requires_grad))
    else:
        owner._buffers[attr] = sliced


def shrink_(model: nn.Module, layers: dict[str, LayerChannels]) -> nn.Module:
    """Replace every module named in ``layers`` by its resized copy; returns ``model``."""
    for name, spec in layers.items():
        if spec.kind == "param":
            try:
                _resized_param(name, model, spec)
            except AttributeError:
                raise ConfigError(
                    f"tensor '{name}' is not in this model; wrong architecture?"
                ) from None
            continue
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"layer '{name}' is not in this model; wrong architecture?") from None
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _resized(name, m, spec))
    return model


@torch.no_grad()
def apply_folds(model: nn.Module, bias_delta: dict, mean_delta: dict, layers: dict) -> None:
    """Add the folded constants (indexed by original output channel) to the resized layers."""
    for name, delta in bias_delta.items():
        m = model.get_submodule(name)
        keep = _index(layers[name].out if name in layers else None, delta.numel(), name)
        m.bias.add_(delta[keep].to(m.bias))
    for name, delta in mean_delta.items():
        m = model.get_submodule(name)
        keep = _index(layers[name].out if name in layers else None, delta.numel(), name)
        m.running_mean.sub_(delta[keep].to(m.running_mean))
