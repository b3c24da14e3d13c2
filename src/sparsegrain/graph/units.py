"""The units (modules read as a whole) on channel variables: convolutions (plain, depthwise,
grouped), Linears and Hugging Face ``Conv1D``, BatchNorms, LayerNorm/GroupNorm, activations,
pools, parameters (``graph.channels`` has the rules)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core.fx import CONST_POOLS, POINTWISE_MODULES
from ..core.onednn import SubsampledConv2d
from .channels import (
    Chan,
    ChannelGraph,
    Reader,
    along,
    as_tuple,
    chan_of,
    first_tensor,
    fresh_chan,
    layer_weight,
    opaque,
    probe,
    same,
)
from .moves import move
from .trace import (
    Node,
    _is_drop_path,
    is_attention,
    is_channel_tensor,
    is_conv1d_transposed,
    tensor_args,
)

# Forwards that pad as nn.Conv1d / nn.Conv2d do (a subclass with its own may pad by itself)
PLAIN_CONV_FORWARDS = (nn.Conv1d.forward, nn.Conv2d.forward, SubsampledConv2d.forward)


def attr(cg: ChannelGraph, node: Node) -> None:
    """A parameter or buffer: its entries are variables; one with a single non-1 axis can be
    sliced by compaction (layer scale), others are kept."""
    axes = tuple(i for i, d in enumerate(node.shape) if d > 1)
    name = str(node.target)
    if len(axes) == 1 and not name.startswith("<"):
        chan = fresh_chan(cg, node, axes)
        cg.params[name] = (axes[0], chan.var)
    else:
        fresh_chan(cg, node, (), pinned=f"tensor '{name}' is used as a whole")


def module(cg: ChannelGraph, node: Node, m: nn.Module) -> None:
    name, x = node.target, first_tensor(node)
    cg.calls[name] = cg.calls.get(name, 0) + 1
    simple = x is not None and len(tensor_args(node)) == 1 and is_channel_tensor(node)
    if isinstance(m, nn.Embedding):
        why = f"embedding '{name}' (its table is kept)"
        fresh_chan(cg, node, (len(node.shape) - 1,), pinned=why)
    elif is_attention(m):
        opaque(cg, node, f"attention '{name}' mixes its channels (heads are removed whole)")
    elif not simple:
        opaque(cg, node, f"call of '{name}' ({type(m).__name__}) not understood")
    elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
        conv(cg, node, name, m, x)
    elif isinstance(m, nn.Linear) or is_conv1d_transposed(m):
        linear(cg, node, name, m, x)
    elif isinstance(m, _BatchNorm):
        c = along(cg, x, 1)
        cg.norms.setdefault(name, []).append(c.var)
        cg.norm_nodes.setdefault(name, []).append(node)
        if m.track_running_stats and m.running_mean is not None and not m.training:
            known, value = probe(node, x, c, m)
        else:
            known, value = torch.zeros_like(c.known), torch.zeros_like(c.value)
        same(cg, node, c, known, value)
    elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        kind = type(m).__name__
        c = chan_of(cg, x)
        cg.pin(c.var, f"{kind} '{name}' normalizes over these channels (removing one changes "
                      "the others' mean and variance)", first=True)  # fmt: skip
        same(cg, node, c, torch.zeros_like(c.known), torch.zeros_like(c.value))
    elif isinstance(m, POINTWISE_MODULES) or _is_drop_path(m):
        c = chan_of(cg, x)
        if _is_drop_path(m) and m.training:
            same(cg, node, c, c.zero, c.value * c.zero)
        else:
            same(cg, node, c, *probe(node, x, c, m))
    elif isinstance(m, CONST_POOLS):
        spatial(cg, node, x, keep_values=True)
    elif isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
        padded = any(p != 0 for p in as_tuple(m.padding)) and m.count_include_pad
        spatial(cg, node, x, keep_values=not padded)
    elif isinstance(m, nn.Flatten):
        move(cg, node, x, lambda t: t.flatten(m.start_dim, m.end_dim))
    else:
        opaque(cg, node, f"module '{name}' of type {type(m).__name__} not understood")


def conv(cg: ChannelGraph, node: Node, name: str, m: nn.Module, x: Node) -> None:
    pad = m.padding
    no_pad = pad == "valid" or (not isinstance(pad, str) and all(p == 0 for p in as_tuple(pad)))
    no_pad = no_pad or m.padding_mode != "zeros"  # copies of real values: constants stay
    # A subclass with its own forward may pad by itself (timm's Conv2dSame pads with zeros).
    no_pad = no_pad and type(m).forward in PLAIN_CONV_FORWARDS
    c = along(cg, x, 1)
    cg.layer_nodes.setdefault(name, []).append(node)
    if m.groups == 1:
        layer_out(cg, node, name, m, c, no_pad, axis=1)
    elif m.groups == m.in_channels == m.out_channels:
        depthwise(cg, node, name, m, c, no_pad)
    else:
        reason = f"'{name}' is a grouped conv ({m.groups} groups of {m.in_channels // m.groups})"
        cg.pin(c.var, reason)
        out = fresh_chan(cg, node, (1,), pinned=reason)
        cg.grouped.add(name)
        cg.writers.setdefault(name, []).append(out.var)
        cg.structural.update(c.var.reshape(-1).tolist() + out.var.reshape(-1).tolist())


def linear(cg: ChannelGraph, node: Node, name: str, m: nn.Module, x: Node) -> None:
    c = along(cg, x, -1)
    cg.layer_nodes.setdefault(name, []).append(node)
    layer_out(cg, node, name, m, c, True, axis=len(node.shape) - 1)


def layer_out(cg, node, name, m, c: Chan, no_pad: bool, axis: int) -> None:
    first = name not in cg.writers
    cg.readers.append(Reader(name, c, foldable=no_pad))
    w = layer_weight(m).to("cpu", torch.float64)
    w2 = w.reshape(w.shape[0], w.shape[1], -1)
    meets = (w2 != 0).any(dim=2)
    usable = c.zero if not no_pad else c.known
    known = ~(meets & ~usable[None, :]).any(dim=1)
    value = w2.sum(dim=2) @ torch.where(usable, c.value, 0.0)
    if getattr(m, "bias", None) is not None:
        value = value + m.bias.detach().to("cpu", torch.float64)
    out = Chan((axis,), None, known, torch.where(known, value, 0.0))
    if first:
        out.var = cg.fresh((w.shape[0],))
        cg.writers[name] = [out.var]
    else:  # a layer called twice: its weight axes are one index each
        out.var = cg.writers[name][0]
        first_reader = next(r for r in cg.readers if r.layer == name)
        cg.union(first_reader.chan.var, c.var)
    cg.chans[node] = out


def depthwise(cg, node, name, m, c: Chan, no_pad: bool) -> None:
    """Output channel ``k`` is filter ``k`` on input channel ``k``: the same variable."""
    cg.depthwise.add(name)
    cg.readers.append(Reader(name, c, foldable=False))
    w = m.weight.detach().to("cpu", torch.float64).reshape(m.out_channels, -1)
    bias = (
        m.bias.detach().to("cpu", torch.float64)
        if m.bias is not None
        else torch.zeros(m.out_channels, dtype=torch.float64)
    )
    usable = c.known if no_pad else c.zero
    known = usable | (w == 0).all(dim=1)
    value = torch.where(usable, c.value, 0.0) * w.sum(dim=1) + bias
    cg.writers.setdefault(name, []).append(c.var)
    cg.chans[node] = Chan((1,), c.var, known, torch.where(known, value, 0.0))


def spatial(cg: ChannelGraph, node: Node, x: Node, keep_values: bool) -> None:
    """A pool: the channel axis stays; other axes shrink."""
    c = along(cg, x, 1)
    if len(node.shape) != len(x.shape) or node.shape[1] != x.shape[1]:
        opaque(cg, node, f"'{node.name}' changes the channel count")
        return
    same(cg, node, c, *((c.known, c.value) if keep_values else (c.zero, c.value * c.zero)))
