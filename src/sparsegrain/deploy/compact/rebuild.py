"""Rebuild layers smaller: the kept output/input channels of a Conv, Linear or BatchNorm.

``shrink_(model, layers)`` replaces each named module by a new module of the same type with the
kept channels (weights, bias, running statistics sliced); every other attribute (kernel, stride,
padding, dilation, eps, momentum) is the original's. The model's own ``forward`` then runs as
before on fewer channels, so a compacted model keeps its class and its module names. Loading a
compacted file is ``shrink_`` on a freshly built model followed by ``load_state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.errors import ConfigError
from ...core.fx import CONVS, NORMS
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
    fk = {"device": m.weight.device}
    if kind in CONVS and m.groups != 1:
        raise ConfigError(f"layer '{name}': grouped convs are not resized")
    if kind in CONVS and spec.kind == "conv":
        out = _index(spec.out, m.out_channels, f"layer '{name}' out")
        inp = _index(spec.inp, m.in_channels, f"layer '{name}' in")
        new = kind(
            len(inp), len(out), m.kernel_size, stride=m.stride, padding=m.padding,
            dilation=m.dilation, groups=m.groups, bias=spec.bias, padding_mode=m.padding_mode,
            dtype=m.weight.dtype, **fk,
        )  # fmt: skip
    elif kind is nn.Linear and spec.kind == "linear":
        out = _index(spec.out, m.out_features, f"layer '{name}' out")
        inp = _index(spec.inp, m.in_features, f"layer '{name}' in")
        new = nn.Linear(len(inp), len(out), bias=spec.bias, dtype=m.weight.dtype, **fk)
    elif kind in NORMS and spec.kind == "norm":
        return _resized_norm(name, m, spec)
    else:
        raise ConfigError(f"layer '{name}': a {kind.__name__} cannot be resized as '{spec.kind}'")
    with torch.no_grad():
        new.weight.copy_(m.weight.detach()[out][:, inp])
        if new.bias is not None:
            new.bias.copy_(m.bias.detach()[out] if m.bias is not None else 0)
    w = m.weight
    if w.dim() == 4 and not w.is_contiguous() and w.is_contiguous(memory_format=CHANNELS_LAST):
        new.weight.data = new.weight.data.contiguous(memory_format=CHANNELS_LAST)
    new.train(m.training)
    return new


def _resized_norm(name: str, m: nn.Module, spec: LayerChannels) -> nn.Module:
    keep = _index(spec.out, m.num_features, f"norm '{name}'")
    dtype = next((t.dtype for t in (m.weight, m.running_mean) if t is not None), None)
    new = type(m)(
        len(keep), eps=m.eps, momentum=m.momentum, affine=m.affine,
        track_running_stats=m.track_running_stats, dtype=dtype,
    )  # fmt: skip
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(m, key)
            if src is not None:
                getattr(new, key).copy_(src.detach()[keep])
        if m.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(m.num_batches_tracked)
    new.train(m.training)
    return new


def shrink_(model: nn.Module, layers: dict[str, LayerChannels]) -> nn.Module:
    """Replace every module named in ``layers`` by its resized copy; returns ``model``."""
    for name, spec in layers.items():
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
