"""Channel dataflow of a traced model: which tensors share a channel index, who reads them, and
which of their channels are provably constant.

A model is traced with ``torch.fx`` and its tensor shapes recorded on one example input. Every
tensor of rank >= 2 has a channel axis (dim 1). Ops that act per channel (BatchNorm, ReLU and other
pointwise activations, pooling, ``+``/``-``/``*`` of aligned tensors, flatten of an ``(N, C, 1, 1)``
map) put their inputs and output in one **group**: tensors whose channel ``k`` must be kept or
removed together. A Conv/Linear starts a new group at its output and is a **reader** of its input's
group. Anything not understood (concatenation, grouped convs, a module type we do not know, the
model's own inputs and outputs) **pins** the groups it touches: all their channels are kept.

Alongside, every channel of every tensor gets a value class: *constant* (with its value; zero is a
constant) or unknown. A Conv/Linear output channel whose weights only meet zero input channels is
its bias (zero without one): a pruned filter. Pointwise modules map constants through themselves,
computed by running the module on a ``(1, C, 1, ..., 1)`` probe so the float arithmetic is the
module's own (BatchNorm turns a zero channel into its shift ``beta - gamma*mean/sqrt(var+eps)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ...core.fx import (
    BINARY,
    BINARY_METHODS,
    CONST_POOL_FUNCTIONS,
    CONST_POOLS,
    CONVS,
    HARMLESS_METHODS,
    NORMS,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    RESHAPE_METHODS,
    RESHAPES,
)


@dataclass
class Values:
    """Per-channel value class of one tensor: ``known[k]`` means channel ``k`` is the constant
    ``value[k]`` at every position, for every input (float64, computed in the model's dtype)."""

    known: torch.Tensor  # (C,) bool
    value: torch.Tensor  # (C,) float64; 0 where unknown

    @classmethod
    def unknown(cls, c: int) -> Values:
        return cls(torch.zeros(c, dtype=torch.bool), torch.zeros(c, dtype=torch.float64))

    @property
    def zero(self) -> torch.Tensor:
        return self.known & (self.value == 0)


@dataclass
class Reader:
    """A Conv/Linear call reading tensor ``node`` (input channel = weight axis 1)."""

    layer: str
    node: fx.Node
    foldable: bool  # a constant input channel adds a per-output constant: no zero padding


@dataclass
class ChannelFlow:
    """What ``trace_channels`` finds; see the module doc."""

    graph: fx.GraphModule
    modules: dict[str, nn.Module]
    readers: list[Reader] = field(default_factory=list)
    layer_io: dict[str, tuple[fx.Node, fx.Node]] = field(default_factory=dict)  # conv/linear
    norms: dict[str, fx.Node] = field(default_factory=dict)  # BN name -> its output tensor
    values: dict[fx.Node, Values] = field(default_factory=dict)
    parent: dict[fx.Node, fx.Node] = field(default_factory=dict)
    pins: dict[fx.Node, list[str]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    # -- groups (union-find over tensor nodes) ----------------------------------------------------
    def find(self, node: fx.Node) -> fx.Node:
        root = node
        while self.parent.get(root, root) is not root:
            root = self.parent[root]
        while node is not root:  # path compression
            node, self.parent[node] = self.parent[node], root
        return root

    def union(self, a: fx.Node, b: fx.Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[rb] = ra

    def pin(self, node: fx.Node, reason: str) -> None:
        self.pins.setdefault(node, []).append(reason)

    def pin_reasons(self) -> dict[fx.Node, list[str]]:
        """Group root -> why its channels are all kept (empty: not pinned)."""
        out: dict[fx.Node, list[str]] = {}
        for node, reasons in self.pins.items():
            out.setdefault(self.find(node), []).extend(reasons)
        return out

    def channels(self, node: fx.Node) -> int:
        return int(_meta(node).shape[1])


def _meta(node) -> TensorMetadata | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return meta if isinstance(meta, TensorMetadata) else None


def is_channel_tensor(node) -> bool:
    meta = _meta(node)
    return meta is not None and len(meta.shape) >= 2 and meta.dtype.is_floating_point


def trace_channels(model: nn.Module, example_input) -> ChannelFlow:
    """Trace ``model`` (in eval mode) and build its channel groups, readers and values.

    Raises whatever ``torch.fx`` raises when the model cannot be traced."""
    gm = fx.symbolic_trace(model)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    with torch.no_grad():
        ShapeProp(gm).propagate(*args)
    flow = ChannelFlow(graph=gm, modules=dict(gm.named_modules()))
    for node in gm.graph.nodes:
        _visit(flow, node)
    return flow


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return [n for n in found if is_channel_tensor(n)]


def _node_params(node: fx.Node) -> bool:
    """Whether an argument after the first is computed in the graph (not a constant)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args[1:], node.kwargs), lambda n: found.append(n) or n)
    return bool(found)


def _opaque(flow: ChannelFlow, node: fx.Node, reason: str) -> None:
    """An op we do not understand: keep every channel of what it reads and writes."""
    for arg in _tensor_args(node):
        flow.pin(arg, reason)
    if is_channel_tensor(node):
        flow.pin(node, reason)
        flow.values[node] = Values.unknown(flow.channels(node))


def _visit(flow: ChannelFlow, node: fx.Node) -> None:
    if node.op == "placeholder":
        if is_channel_tensor(node):
            flow.pin(node, "model input")
            flow.values[node] = Values.unknown(flow.channels(node))
    elif node.op == "get_attr":
        if is_channel_tensor(node):
            flow.pin(node, f"tensor attribute '{node.target}'")
            flow.values[node] = Values.unknown(flow.channels(node))
    elif node.op == "output":
        for arg in _tensor_args(node):
            flow.pin(arg, "model output")
    elif node.op == "call_module":
        _visit_module(flow, node, flow.modules[node.target])
    elif node.op == "call_function":
        _visit_function(flow, node)
    elif node.op == "call_method":
        _visit_method(flow, node)
    else:
        _opaque(flow, node, f"op {node.op} not understood")
    if node.op != "output" and is_channel_tensor(node) and node not in flow.values:
        _opaque(flow, node, f"'{node.name}' not understood")


def _first(node: fx.Node) -> fx.Node | None:
    arg = node.args[0] if node.args else None
    return arg if is_channel_tensor(arg) else None


def _visit_module(flow: ChannelFlow, node: fx.Node, m: nn.Module) -> None:
    name, x = node.target, _first(node)
    kind = type(m)
    flow.calls[name] = flow.calls.get(name, 0) + 1
    if x is None or not is_channel_tensor(node) or len(node.args) != 1 or node.kwargs:
        _opaque(flow, node, f"call of '{name}' ({kind.__name__}) not understood")
    elif kind in CONVS or kind is nn.Linear:
        _visit_layer(flow, node, name, m, x)
    elif kind in NORMS:
        _same_channels(flow, node, x)
        if name in flow.norms:  # one BN applied twice: its channels are one index
            flow.union(flow.norms[name], node)
        flow.norms.setdefault(name, node)
        if m.track_running_stats and m.running_mean is not None:
            flow.values[node] = _probe(flow, node, x, m)
        else:
            flow.values[node] = Values.unknown(flow.channels(node))
    elif kind in POINTWISE_MODULES:
        _same_channels(flow, node, x)
        flow.values[node] = _probe(flow, node, x, m)
    elif kind in CONST_POOLS:
        _same_channels(flow, node, x, values=flow.values[x])
    elif kind in (nn.AvgPool1d, nn.AvgPool2d):
        _avg_pool(flow, node, x, m.padding, m.count_include_pad)
    elif kind is nn.Flatten:
        _reshape(flow, node, x)
    else:
        _opaque(flow, node, f"module '{name}' of type {kind.__name__} not understood")


def _visit_layer(flow: ChannelFlow, node: fx.Node, name: str, m: nn.Module, x: fx.Node) -> None:
    conv = type(m) in CONVS
    if conv and m.groups != 1:
        _opaque(flow, node, f"'{name}' is a grouped conv ({m.groups} groups)")
        return
    if not conv and len(_meta(x).shape) != 2:
        _opaque(flow, node, f"'{name}' is a Linear on a rank-{len(_meta(x).shape)} tensor")
        return
    if name in flow.layer_io:  # a layer called twice: its weight axes are one index each
        first_in, first_out = flow.layer_io[name]
        flow.union(first_in, x)
        flow.union(first_out, node)
    else:
        flow.layer_io[name] = (x, node)
    pad = m.padding if conv else 0
    no_pad = pad == "valid" or (not isinstance(pad, str) and all(p == 0 for p in _tuple(pad)))
    # reflect/replicate/circular padding copies real values: a constant channel stays constant.
    no_pad = no_pad or (conv and m.padding_mode != "zeros")
    flow.readers.append(Reader(name, x, foldable=no_pad))
    flow.values[node] = _layer_values(m, flow.values[x], conv and not no_pad)


def _tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


@torch.no_grad()
def _layer_values(m: nn.Module, inp: Values, padded: bool) -> Values:
    """Output channel ``j`` is constant when every non-zero weight of filter ``j`` meets a
    constant input channel, and (with zero padding) those are all exactly zero."""
    w = m.weight.detach().cpu()
    w2 = w.reshape(w.shape[0], w.shape[1], -1).to(torch.float64)  # (K, C, R*S)
    meets = (w2 != 0).any(dim=2)  # (K, C)
    usable = inp.zero if padded else inp.known
    known = ~(meets & ~usable[None, :]).any(dim=1)
    value = w2.sum(dim=2) @ torch.where(usable, inp.value, 0.0)
    if m.bias is not None:
        value = value + m.bias.detach().to("cpu", torch.float64)
    return Values(known, torch.where(known, value, 0.0))


def _same_channels(flow: ChannelFlow, node: fx.Node, x: fx.Node, values: Values | None = None):
    if flow.channels(node) != flow.channels(x):
        _opaque(flow, node, f"'{node.name}' changes the channel count")
        return
    flow.union(x, node)
    if values is not None:
        flow.values[node] = values


@torch.no_grad()
def _probe(flow: ChannelFlow, node: fx.Node, x: fx.Node, fn: Callable, *rest, **kw) -> Values:
    """Run ``fn`` on a ``(1, C, 1, ...)`` tensor holding ``x``'s constants, in ``x``'s dtype."""
    src = flow.values[x]
    meta = _meta(x)
    shape = (1, flow.channels(x)) + (1,) * (len(meta.shape) - 2)
    tensors = [*fn.parameters(), *fn.buffers()] if isinstance(fn, nn.Module) else []
    device = tensors[0].device if tensors else "cpu"
    probe = torch.where(src.known, src.value, 0.0).to(meta.dtype).reshape(shape).to(device)
    out = fn(probe, *rest, **kw).reshape(-1).to("cpu", torch.float64)
    return Values(src.known.clone(), torch.where(src.known, out, 0.0))


def _avg_pool(flow: ChannelFlow, node: fx.Node, x: fx.Node, padding, count_include_pad) -> None:
    src = flow.values[x]
    padded = any(p != 0 for p in _tuple(padding)) and count_include_pad
    # Averaging zero padding into a constant makes it vary at the border; a zero stays zero.
    _same_channels(flow, node, x, values=Values(src.zero, src.value) if padded else src)


def _reshape(flow: ChannelFlow, node: fx.Node, x: fx.Node) -> None:
    """Channel-preserving only for ``(N, C, 1, ...)`` -> ``(N, C, 1, ...)`` or equal shapes."""
    a, b = tuple(_meta(x).shape), tuple(_meta(node).shape)
    ones = all(d == 1 for d in a[2:]) and all(d == 1 for d in b[2:])
    if len(b) >= 2 and a[:2] == b[:2] and (ones or a == b):
        _same_channels(flow, node, x, values=flow.values[x])
    else:
        _opaque(flow, node, f"'{node.name}' reshapes {list(a)} to {list(b)}")


def _visit_function(flow: ChannelFlow, node: fx.Node) -> None:
    fn, x = node.target, _first(node)
    if fn is getattr and node.args[1:2] in (("shape",), ("dtype",), ("device",), ("ndim",)):
        return  # x.shape and the like read no values
    if fn in BINARY:
        _binary(flow, node, BINARY[fn])
    elif x is None or not is_channel_tensor(node):
        _opaque(flow, node, f"function {getattr(fn, '__name__', fn)} not understood")
    elif len(_tensor_args(node)) != 1:
        _opaque(flow, node, f"'{node.name}' reads several tensors")
    elif fn in POINTWISE_FUNCTIONS and not _node_params(node):
        _same_channels(flow, node, x)
        flow.values[node] = _probe(flow, node, x, fn, *node.args[1:], **node.kwargs)
    elif fn in CONST_POOL_FUNCTIONS:
        if fn is torch.mean:
            _reduce(flow, node, x)
        else:
            _same_channels(flow, node, x, values=flow.values[x])
    elif fn in (F.avg_pool1d, F.avg_pool2d):
        args = dict(
            zip(("input", "kernel_size", "stride", "padding", "ceil_mode", "cip"), node.args)
        )
        pad = node.kwargs.get("padding", args.get("padding", 0))
        _avg_pool(flow, node, x, pad, node.kwargs.get("count_include_pad", args.get("cip", True)))
    elif fn in RESHAPES:
        _reshape(flow, node, x)
    else:
        _opaque(flow, node, f"function {getattr(fn, '__name__', fn)} not understood")


def _reduce(flow: ChannelFlow, node: fx.Node, x: fx.Node) -> None:
    """A mean/max over spatial dims only: ``(N, C, ...)`` -> ``(N, C[, 1...])``."""
    a, b = tuple(_meta(x).shape), tuple(_meta(node).shape)
    if len(b) >= 2 and a[:2] == b[:2] and all(d == 1 for d in b[2:]):
        _same_channels(flow, node, x, values=flow.values[x])
    else:
        _opaque(flow, node, f"'{node.name}' reduces {list(a)} to {list(b)}")


def _visit_method(flow: ChannelFlow, node: fx.Node) -> None:
    name, x = node.target, _first(node)
    if name in BINARY_METHODS:
        _binary(flow, node, BINARY_METHODS[name])
    elif name in HARMLESS_METHODS:
        return
    elif x is None or not is_channel_tensor(node) or len(_tensor_args(node)) != 1:
        _opaque(flow, node, f"method .{name}() not understood")
    elif name in POINTWISE_METHODS and not _node_params(node):
        _same_channels(flow, node, x)
        flow.values[node] = _probe(flow, node, x, lambda t: getattr(t, name)(*node.args[1:]))
    elif name in ("mean", "amax"):
        _reduce(flow, node, x)
    elif name in RESHAPE_METHODS:
        _reshape(flow, node, x)
    else:
        _opaque(flow, node, f"method .{name}() not understood")


def _binary(flow: ChannelFlow, node: fx.Node, fn: Callable) -> None:
    """``a + b``, ``a - b``, ``a * b``: aligned channel tensors join one group; a number is
    applied to the constants."""
    a, b = (node.args + (None, None))[:2]
    if node.kwargs or not is_channel_tensor(node):
        _opaque(flow, node, f"'{node.name}' not understood")
        return
    tensors = [t for t in (a, b) if is_channel_tensor(t)]
    others = [t for t in (a, b) if not is_channel_tensor(t)]
    if any(not isinstance(t, (int, float)) or isinstance(t, bool) for t in others):
        _opaque(flow, node, f"'{node.name}' mixes a tensor with a non-number")
        return
    c = flow.channels(node)
    if any(
        flow.channels(t) != c or _meta(t).shape[0] not in (1, _meta(node).shape[0]) for t in tensors
    ):
        _opaque(flow, node, f"'{node.name}' broadcasts over channels")
        return
    for t in tensors:
        _same_channels(flow, node, t)
    va = flow.values[a] if a in tensors else _const(c, a)
    vb = flow.values[b] if b in tensors else _const(c, b)
    known = va.known & vb.known
    value = fn(va.value, vb.value)
    if fn is torch.mul:  # zero times anything is zero
        known = known | va.zero | vb.zero
        value = torch.where(va.zero | vb.zero, 0.0, value)
    flow.values[node] = Values(known, torch.where(known, value, 0.0))


def _const(c: int, v: float) -> Values:
    return Values(torch.ones(c, dtype=torch.bool), torch.full((c,), float(v), dtype=torch.float64))
