"""``channel_graph``: trace a model and visit its calls in order (``graph.channels`` has the
rules; ``units`` the modules, ``moves`` data movement; here: functions, methods, arithmetic)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..core.fx import (
    BINARY,
    BINARY_METHODS,
    CONST_POOL_FUNCTIONS,
    HARMLESS_METHODS,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
)
from .channels import (
    Chan,
    ChannelGraph,
    as_tuple,
    chan_of,
    first_tensor,
    fresh_chan,
    opaque,
    probe,
    same,
)
from .moves import (
    CATS,
    MOVE_FUNCTIONS,
    MOVES,
    RESHAPE_LIKE,
    cat,
    from_index,
    is_multi,
    move,
    pieces,
    replay,
    varying,
)
from .trace import Node, is_channel_tensor, tensor_args, trace
from .units import attr, module

DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d}


def channel_graph(model: nn.Module, example_input) -> ChannelGraph:
    """Trace ``model`` (see ``trace.trace``) and build its channel variables."""
    graph = trace(model, example_input)
    cg = ChannelGraph(graph, graph.modules)
    for node in graph.nodes:
        _visit(cg, node)
    return cg


# -- helpers -------------------------------------------------------------------------------------


def _visit(cg: ChannelGraph, node: Node) -> None:
    if node.op == "placeholder":
        if is_channel_tensor(node):
            fresh_chan(cg, node, (1,) if len(node.shape) > 1 else (0,), pinned="model input")
    elif node.op == "get_attr":
        if is_channel_tensor(node):
            attr(cg, node)
    elif node.op == "output":
        for arg in tensor_args(node):
            if is_channel_tensor(arg):
                cg.pin(chan_of(cg, arg).var, "model output")
    elif node.op == "call_module":
        module(cg, node, cg.modules[node.target])
    elif node.op in ("call_function", "call_method"):
        _function(cg, node)
    if node.op != "output" and is_channel_tensor(node) and node not in cg.chans:
        opaque(cg, node, f"'{node.name}' not understood")


def _function(cg: ChannelGraph, node: Node) -> None:
    fn, x = node.target, first_tensor(node)
    method = node.op == "call_method"
    if (method and fn in HARMLESS_METHODS) or (not method and fn is getattr):
        return  # x.size(), x.shape, x.dtype: read no values
    if is_multi(node) and x is not None:
        pieces(cg, node, x)
    elif not method and fn is operator.getitem and node.args[0] in cg.pieces:
        idx, c = cg.pieces[node.args[0]]
        i = node.args[1]
        if isinstance(i, int) and -len(idx) <= i < len(idx):
            from_index(cg, node, idx[i], c, move=True)
    elif not method and fn in CATS:
        cat(cg, node)
    elif (method and fn in BINARY_METHODS) or (not method and fn in BINARY):
        _binary(cg, node, BINARY_METHODS[fn] if method else BINARY[fn])
    elif not method and fn is operator.truediv and not is_channel_tensor(_second(node)):
        _binary(cg, node, torch.div)
    elif x is None or not is_channel_tensor(node):
        if any(is_channel_tensor(a) for a in tensor_args(node)) or is_channel_tensor(node):
            opaque(cg, node, f"'{node.name}' not understood")
    elif len([a for a in tensor_args(node) if is_channel_tensor(a)]) != 1:
        opaque(cg, node, f"'{node.name}' reads several tensors")
    elif (method and fn in RESHAPE_LIKE) or (not method and fn in (torch.flatten, torch.reshape)):
        move(cg, node, x, lambda t: t.reshape(node.shape))
    elif (method and fn in MOVES) or (not method and fn in MOVE_FUNCTIONS):
        replay(cg, node, x)
    elif (method and fn in POINTWISE_METHODS) or (
        not method and (fn in POINTWISE_FUNCTIONS or fn in DROPOUTS)
    ):
        c = chan_of(cg, x)
        if not method and fn in DROPOUTS:
            same(cg, node, c, c.zero, c.value * c.zero)  # training or not, a zero stays zero
        else:
            call = (lambda t: getattr(t, fn)(*node.args[1:], **node.kwargs)) if method else fn
            rest = () if method else node.args[1:]
            same(cg, node, c, *probe(node, x, c, call, *rest, **({} if method else node.kwargs)))
    elif (not method and fn in CONST_POOL_FUNCTIONS) or (method and fn in ("mean", "amax")):
        _reduce(cg, node, x)
    else:
        opaque(cg, node, f"'{node.name}' not understood")


def _second(node: Node):
    return node.args[1] if len(node.args) > 1 else None


def _reduce(cg: ChannelGraph, node: Node, x: Node) -> None:
    """A pool, mean or max over axes that hold no variable keeps the variables (and, for a mean
    or max, the constants); over one that does: pinned."""
    c = chan_of(cg, x)
    a, b = tuple(x.shape), tuple(node.shape)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if len(a) == len(b):
        if all(a[d] == b[d] for d in c.axes):
            same(cg, node, c)
            return
    elif isinstance(dims, (int, tuple, list)):
        gone = sorted({d % len(a) for d in as_tuple(dims)})
        if not set(gone) & set(c.axes) and len(b) == len(a) - len(gone):
            axes = tuple(d - sum(1 for g in gone if g < d) for d in c.axes)
            cg.chans[node] = Chan(axes, c.var, c.known, c.value)
            return
    opaque(cg, node, f"'{node.name}' reduces {list(a)} to {list(b)} across channels")


def _binary(cg: ChannelGraph, node: Node, fn) -> None:
    a, b = (tuple(node.args) + (None, None))[:2]
    if node.kwargs or not is_channel_tensor(node):
        opaque(cg, node, f"'{node.name}' not understood")
        return
    out_shape = node.shape
    parts = []
    for t in (a, b):
        if is_channel_tensor(t):
            c = chan_of(cg, t)
            if len(t.shape) > len(out_shape):
                opaque(cg, node, f"'{node.name}' not understood")
                return
            lead = len(out_shape) - len(t.shape)
            shape = [1] * lead + c.embedded(len(t.shape))
            idx = torch.arange(c.var.numel()).reshape(shape).expand(out_shape)
            parts.append((idx, c))
        elif isinstance(t, (int, float)) and not isinstance(t, bool):
            parts.append((None, float(t)))
        else:
            opaque(cg, node, f"'{node.name}' mixes a tensor with a non-number")
            return
    chans = [c for idx, c in parts if idx is not None]
    if len(chans) == 1:
        (idx, c), other = [(i, c) for i, c in parts if i is not None][0], None
        const = [c for i, c in parts if i is None][0]
        from_index(cg, node, idx, c)
        out = cg.chans[node]
        va, vb = out.value, torch.full_like(out.value, const)
        if parts[0][0] is None:
            va, vb = vb, va
        known = out.known
        value = fn(va, vb)
        if fn is torch.mul and const == 0:
            known = torch.ones_like(known)
        cg.chans[node] = Chan(out.axes, out.var, known, torch.where(known, value, 0.0))
        del other
        return
    (ia, ca), (ib, cb) = parts
    axes = sorted(set(varying(ia)) | set(varying(ib)))
    from_index(cg, node, ia, ca, axes)
    left = cg.chans[node]
    from_index(cg, node, ib, cb, axes)
    right = cg.chans[node]
    cg.union(left.var, right.var)
    known = left.known & right.known
    value = fn(left.value, right.value)
    if fn is torch.mul:  # zero times anything is zero
        known = known | left.zero | right.zero
        value = torch.where(left.zero | right.zero, 0.0, value)
    cg.chans[node] = Chan(left.axes, left.var, known, torch.where(known, value, 0.0))
