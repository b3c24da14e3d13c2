"""Channel dependencies of a model: which channels of which tensors, layers, norms and
parameters are one channel (kept or removed together), who reads them, and which are constant.

Every channel of every floating tensor is a **variable**: an integer. A tensor carries its
variables on its *channel axes* (``Chan.axes``; one array entry per position on those axes, the
other axes broadcast). Ops map variables:

- A Conv (``groups == 1``), Linear, or Hugging Face ``Conv1D`` reads its input along its channel
  axis (Conv: 1, Linear: the last) and writes fresh variables, one per filter.
- A depthwise conv (``groups == in == out channels``), BatchNorm (and subclasses, such as timm's
  ``BatchNormAct2d``), activations, dropout and stochastic depth, pooling keep each variable in
  place: channel ``k`` of the output *is* channel ``k`` of the input.
- Data movement (view, reshape, flatten, permute, transpose, slicing, chunk, split, unbind,
  expand, concatenation, channel shuffle) is run on a tensor of variable indices instead of the
  data, so wherever a value goes, its variable goes.
- ``a + b``, ``a - b``, ``a * b`` (residual adds, squeeze-excitation gates, layer scale by a
  parameter): the two variables that meet at each output position are **unified**: one channel.
  A parameter's entries are variables too, so a layer-scale ``gamma`` follows its channels.
- Reading along an axis unifies the variables of each slice: a Linear's input column is one
  thing however many positions share it.
- Everything else (LayerNorm and GroupNorm, whose statistics mix channels; attention blocks;
  matmuls; ops not understood) **pins** the variables it touches: they are all kept, for a
  reason that names the op. So are the model's inputs and outputs.

Alongside, each position has a value class: *constant* (with its value) or unknown, exactly as
the model's own float arithmetic makes it (pointwise modules are run on a probe of the
constants). A filter whose weights only meet zero inputs outputs its bias: a constant.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core.fx import (
    BINARY,
    BINARY_METHODS,
    CONST_POOL_FUNCTIONS,
    CONST_POOLS,
    HARMLESS_METHODS,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
)
from .trace import (
    Graph,
    Node,
    _is_drop_path,
    is_attention,
    is_channel_tensor,
    is_conv1d_transposed,
    tensor_args,
    trace,
)

MOVES = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "squeeze", "unsqueeze",
    "contiguous", "expand", "expand_as", "narrow", "chunk", "split", "unbind", "movedim",
    "swapaxes", "t", "flip", "roll", "clone", "detach", "to", "float", "type_as", "repeat",
}  # fmt: skip
MOVE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
    torch.transpose, torch.chunk, torch.split, torch.unbind, torch.narrow, torch.movedim,
    torch.swapaxes, torch.flip, torch.roll, torch.t, operator.getitem,
}  # fmt: skip
RESHAPE_LIKE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze"}
CATS = {torch.cat, torch.concat, torch.concatenate}
DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d}


@dataclass
class Chan:
    """The variables of one tensor on its channel ``axes`` (arrays shaped like those axes)."""

    axes: tuple[int, ...]
    var: torch.Tensor  # int64
    known: torch.Tensor  # bool
    value: torch.Tensor  # float64, 0 where unknown

    @property
    def zero(self) -> torch.Tensor:
        return self.known & (self.value == 0)

    def embedded(self, rank: int) -> list[int]:
        """The broadcastable shape of the arrays in a tensor of rank ``rank``."""
        shape = [1] * rank
        for i, a in enumerate(self.axes):
            shape[a] = self.var.shape[i]
        return shape


@dataclass
class Reader:
    """A layer call reading ``chan`` along its input channel axis (input channel ``c``: entry
    ``c`` of the 1-D arrays)."""

    layer: str
    chan: Chan
    foldable: bool  # a constant input channel adds one constant per output: folds into a bias


@dataclass
class ChannelGraph:
    graph: Graph
    modules: dict[str, nn.Module]
    parent: list[int] = field(default_factory=list)
    pins: dict[int, list[str]] = field(default_factory=dict)
    first: set[str] = field(default_factory=set)  # reasons named before the others
    chans: dict[Node, Chan] = field(default_factory=dict)
    readers: list[Reader] = field(default_factory=list)
    writers: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # layer -> out vars
    norms: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # BN -> channel vars
    norm_nodes: dict[str, list[Node]] = field(default_factory=dict)
    params: dict[str, tuple[int, torch.Tensor]] = field(default_factory=dict)  # fqn -> axis, vars
    calls: dict[str, int] = field(default_factory=dict)
    layer_nodes: dict[str, list[Node]] = field(default_factory=dict)
    depthwise: set[str] = field(default_factory=set)
    grouped: set[str] = field(default_factory=set)  # pinned on both sides
    structural: set[int] = field(default_factory=set)  # variables not even an ideal removes
    pieces: dict[Node, tuple[list[torch.Tensor], Chan]] = field(default_factory=dict)

    @property
    def tracer(self) -> str:
        return self.graph.tracer

    # -- variables ----------------------------------------------------------------------------
    def fresh(self, shape) -> torch.Tensor:
        n = int(torch.Size(shape).numel())
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n, dtype=torch.long).reshape(shape)

    def find(self, v: int) -> int:
        p = self.parent
        root = v
        while p[root] != root:
            root = p[root]
        while p[v] != root:
            p[v], v = root, p[v]
        return root

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        pairs = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1).unique(dim=0).tolist()
        for x, y in pairs:
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx

    def pin(self, var: torch.Tensor, reason: str, first: bool = False) -> None:
        """Keep ``var``'s channels, for ``reason`` (``first``: the reason to name first, the
        one no rewrite of the model would lift, such as a LayerNorm's)."""
        for v in var.reshape(-1).unique().tolist():
            reasons = self.pins.setdefault(v, [])
            if reason not in reasons:
                reasons.append(reason)
        if first:
            self.first.add(reason)

    def pin_reasons(self) -> dict[int, list[str]]:
        """Class root -> why its channels are kept."""
        out: dict[int, list[str]] = {}
        for v, reasons in self.pins.items():
            bucket = out.setdefault(self.find(v), [])
            bucket.extend(r for r in reasons if r not in bucket)
        for bucket in out.values():
            bucket.sort(key=lambda r: r not in self.first)
        return out

    def roots(self, var: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.find(v) for v in var.reshape(-1).tolist()], dtype=torch.long)


def channel_graph(model: nn.Module, example_input) -> ChannelGraph:
    """Trace ``model`` (see ``trace.trace``) and build its channel variables."""
    graph = trace(model, example_input)
    cg = ChannelGraph(graph, graph.modules)
    for node in graph.nodes:
        _visit(cg, node)
    return cg


# -- helpers -------------------------------------------------------------------------------------
def _new(cg: ChannelGraph, node: Node, axes: tuple[int, ...], pinned: str = "") -> Chan:
    shape = [node.shape[a] for a in axes]
    chan = Chan(
        axes,
        cg.fresh(shape),
        torch.zeros(shape, dtype=torch.bool),
        torch.zeros(shape, dtype=torch.float64),
    )
    if pinned:
        cg.pin(chan.var, pinned)
    cg.chans[node] = chan
    return chan


def _chan(cg: ChannelGraph, node: Node) -> Chan:
    """The node's variables (one pinned variable for a tensor nothing is known about)."""
    if node not in cg.chans:
        _new(cg, node, (), pinned=f"'{node.name}' not understood")
    return cg.chans[node]


def _opaque(cg: ChannelGraph, node: Node, reason: str) -> None:
    """An op not understood: what it reads is kept; what it writes is one pinned variable (a
    reader of it along an axis gets pinned variables there, see ``_along``)."""
    for arg in tensor_args(node):
        if is_channel_tensor(arg):
            cg.pin(_chan(cg, arg).var, reason)
    if is_channel_tensor(node):
        _new(cg, node, (), pinned=reason)


def _along(cg: ChannelGraph, x: Node, axis: int) -> Chan:
    """``x``'s variables as one per index of ``axis`` (1-D arrays): variables on other axes are
    unified per slice; a tensor with no variables on ``axis`` gets pinned fresh ones."""
    c = _chan(cg, x)
    axis = axis % len(x.shape)
    if axis not in c.axes:
        reasons = [r for v in c.var.reshape(-1).unique().tolist() for r in cg.pins.get(v, [])]
        reasons = reasons or [f"'{x.name}' has its channels on another axis"]
        cg.pin(c.var, reasons[0])
        fresh = cg.fresh((x.shape[axis],))
        for r in dict.fromkeys(reasons):
            cg.pin(fresh, r)
        return Chan(
            (axis,),
            fresh,
            torch.zeros(x.shape[axis], dtype=torch.bool),
            torch.zeros(x.shape[axis], dtype=torch.float64),
        )
    i = c.axes.index(axis)
    var = c.var.movedim(i, 0).reshape(c.var.shape[i], -1)
    known = c.known.movedim(i, 0).reshape(var.shape)
    value = c.value.movedim(i, 0).reshape(var.shape)
    if var.shape[1] > 1:
        cg.union(var[:, :1].expand_as(var), var)
        same = known.all(1) & (value == value[:, :1]).all(1)
    else:
        same = known[:, 0]
    return Chan((axis,), var[:, 0].clone(), same, torch.where(same, value[:, 0], 0.0))


def _same(cg: ChannelGraph, node: Node, chan: Chan, known=None, value=None) -> None:
    cg.chans[node] = Chan(
        chan.axes,
        chan.var,
        chan.known if known is None else known,
        chan.value if value is None else value,
    )


@torch.no_grad()
def _probe(node: Node, x: Node, chan: Chan, fn, *rest, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``fn`` on a broadcastable tensor holding ``chan``'s constants, in ``x``'s dtype."""
    shape = chan.embedded(len(x.shape))
    tensors = [*fn.parameters(), *fn.buffers()] if isinstance(fn, nn.Module) else []
    device = tensors[0].device if tensors else "cpu"
    probe = torch.where(chan.known, chan.value, 0.0).to(x.dtype).reshape(shape).to(device)
    out = fn(probe, *rest, **kw)
    if not isinstance(out, torch.Tensor) or out.numel() != chan.var.numel():
        return torch.zeros_like(chan.known), torch.zeros_like(chan.value)
    out = out.reshape(chan.var.shape).to("cpu", torch.float64)
    return chan.known.clone(), torch.where(chan.known, out, 0.0)


def _first(node: Node) -> Node | None:
    arg = node.args[0] if node.args else None
    return arg if is_channel_tensor(arg) else None


# -- the visitor ---------------------------------------------------------------------------------
def _visit(cg: ChannelGraph, node: Node) -> None:
    if node.op == "placeholder":
        if is_channel_tensor(node):
            _new(cg, node, (1,) if len(node.shape) > 1 else (0,), pinned="model input")
    elif node.op == "get_attr":
        if is_channel_tensor(node):
            _attr(cg, node)
    elif node.op == "output":
        for arg in tensor_args(node):
            if is_channel_tensor(arg):
                cg.pin(_chan(cg, arg).var, "model output")
    elif node.op == "call_module":
        _module(cg, node, cg.modules[node.target])
    elif node.op in ("call_function", "call_method"):
        _function(cg, node)
    if node.op != "output" and is_channel_tensor(node) and node not in cg.chans:
        _opaque(cg, node, f"'{node.name}' not understood")


def _attr(cg: ChannelGraph, node: Node) -> None:
    """A parameter or buffer: its entries are variables; one with a single non-1 axis can be
    sliced by compaction (layer scale), others are kept."""
    axes = tuple(i for i, d in enumerate(node.shape) if d > 1)
    name = str(node.target)
    if len(axes) == 1 and not name.startswith("<"):
        chan = _new(cg, node, axes)
        cg.params[name] = (axes[0], chan.var)
    else:
        _new(cg, node, (), pinned=f"tensor '{name}' is used as a whole")


def _module(cg: ChannelGraph, node: Node, m: nn.Module) -> None:
    name, x = node.target, _first(node)
    cg.calls[name] = cg.calls.get(name, 0) + 1
    simple = x is not None and len(tensor_args(node)) == 1 and is_channel_tensor(node)
    if isinstance(m, nn.Embedding):
        _new(cg, node, (len(node.shape) - 1,), pinned=f"embedding '{name}' (its table is kept)")
    elif is_attention(m):
        _opaque(cg, node, f"attention '{name}' mixes its channels (heads are removed whole)")
    elif not simple:
        _opaque(cg, node, f"call of '{name}' ({type(m).__name__}) not understood")
    elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
        _conv(cg, node, name, m, x)
    elif isinstance(m, nn.Linear) or is_conv1d_transposed(m):
        _linear(cg, node, name, m, x)
    elif isinstance(m, _BatchNorm):
        c = _along(cg, x, 1)
        cg.norms.setdefault(name, []).append(c.var)
        cg.norm_nodes.setdefault(name, []).append(node)
        if m.track_running_stats and m.running_mean is not None and not m.training:
            known, value = _probe(node, x, c, m)
        else:
            known, value = torch.zeros_like(c.known), torch.zeros_like(c.value)
        _same(cg, node, c, known, value)
    elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        kind = type(m).__name__
        c = _chan(cg, x)
        cg.pin(c.var, f"{kind} '{name}' normalizes over these channels (removing one changes "
                      "the others' mean and variance)", first=True)  # fmt: skip
        _same(cg, node, c, torch.zeros_like(c.known), torch.zeros_like(c.value))
    elif isinstance(m, POINTWISE_MODULES) or _is_drop_path(m):
        c = _chan(cg, x)
        if _is_drop_path(m) and m.training:
            _same(cg, node, c, c.zero, c.value * c.zero)
        else:
            _same(cg, node, c, *_probe(node, x, c, m))
    elif isinstance(m, CONST_POOLS):
        _spatial(cg, node, x, keep_values=True)
    elif isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
        padded = any(p != 0 for p in _tuple(m.padding)) and m.count_include_pad
        _spatial(cg, node, x, keep_values=not padded)
    elif isinstance(m, nn.Flatten):
        _move(cg, node, x, lambda t: t.flatten(m.start_dim, m.end_dim))
    else:
        _opaque(cg, node, f"module '{name}' of type {type(m).__name__} not understood")


def _tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _conv(cg: ChannelGraph, node: Node, name: str, m: nn.Module, x: Node) -> None:
    pad = m.padding
    no_pad = pad == "valid" or (not isinstance(pad, str) and all(p == 0 for p in _tuple(pad)))
    no_pad = no_pad or m.padding_mode != "zeros"  # copies of real values: constants stay
    c = _along(cg, x, 1)
    cg.layer_nodes.setdefault(name, []).append(node)
    if m.groups == 1:
        _layer_out(cg, node, name, m, c, no_pad, axis=1)
    elif m.groups == m.in_channels == m.out_channels:
        _depthwise(cg, node, name, m, c, no_pad)
    else:
        reason = f"'{name}' is a grouped conv ({m.groups} groups of {m.in_channels // m.groups})"
        cg.pin(c.var, reason)
        out = _new(cg, node, (1,), pinned=reason)
        cg.grouped.add(name)
        cg.writers.setdefault(name, []).append(out.var)
        cg.structural.update(c.var.reshape(-1).tolist() + out.var.reshape(-1).tolist())


def _linear(cg: ChannelGraph, node: Node, name: str, m: nn.Module, x: Node) -> None:
    c = _along(cg, x, -1)
    cg.layer_nodes.setdefault(name, []).append(node)
    _layer_out(cg, node, name, m, c, True, axis=len(node.shape) - 1)


def layer_weight(m: nn.Module) -> torch.Tensor:
    """The weight as ``(out, in, ...)`` (Hugging Face ``Conv1D`` stores it ``(in, out)``)."""
    w = m.weight.detach()
    return w.t() if is_conv1d_transposed(m) else w


def _layer_out(cg, node, name, m, c: Chan, no_pad: bool, axis: int) -> None:
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


def _depthwise(cg, node, name, m, c: Chan, no_pad: bool) -> None:
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


def _spatial(cg: ChannelGraph, node: Node, x: Node, keep_values: bool) -> None:
    """A pool: the channel axis stays; other axes shrink."""
    c = _along(cg, x, 1)
    if len(node.shape) != len(x.shape) or node.shape[1] != x.shape[1]:
        _opaque(cg, node, f"'{node.name}' changes the channel count")
        return
    _same(cg, node, c, *((c.known, c.value) if keep_values else (c.zero, c.value * c.zero)))


def _move(cg: ChannelGraph, node: Node, x: Node, fn) -> None:
    """Data movement: run ``fn`` on an index tensor of ``x``'s variable positions."""
    c = _chan(cg, x)
    idx = torch.arange(c.var.numel()).reshape(c.embedded(len(x.shape))).expand(x.shape)
    try:
        out = fn(idx)
    except Exception:  # noqa: BLE001 (an op we cannot replay on indices)
        _opaque(cg, node, f"'{node.name}' not understood")
        return
    if isinstance(out, (tuple, list)):
        _opaque(cg, node, f"'{node.name}' not understood")
        return
    out_axes = _varying(out)
    if c.var.numel() > 1 and len(out_axes) <= len(c.axes) and (why := _fixed(node, x, c, out_axes)):
        reason = f"'{node.name}' {why} (it would not follow a removal)"
        cg.pin(c.var, reason)
        _new(cg, node, (), pinned=reason)
        return
    _from_index(cg, node, out, c, move=True)


def _fixed(node: Node, x: Node, c: Chan, out_axes: list[int]) -> str:
    """Why a move is written for the channel count it saw (a literal size, an index list, a
    shift), or ''."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    rest = list(node.args[1:])
    if name in ("view", "reshape"):
        sizes = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        for d in out_axes:
            size = sizes[d] if d < len(sizes) else None
            if isinstance(size, int) and size != -1:
                return f"sets the size of a channel axis to the number {size}"
        return ""
    if name in ("roll", "narrow"):
        dims = node.kwargs.get("dims", node.kwargs.get("dim"))
        if dims is None and rest:
            dims = rest[-1] if name == "roll" and len(rest) > 1 else rest[0]
        if dims is None:  # roll over the flattened tensor
            return "rolls the channels"
        dims = {d % len(x.shape) for d in _tuple(dims)}
        return (
            f"{'rolls' if name == 'roll' else 'narrows'} a channel axis"
            if dims & set(c.axes)
            else ""
        )
    if name == "getitem":
        return _fixed_index(rest[0] if rest else None, len(x.shape), c.axes)
    return ""


def _fixed_index(index, rank: int, axes: tuple[int, ...]) -> str:
    """Indexing that picks channels by number (anything but ``:`` on a channel axis)."""
    items = list(index) if isinstance(index, tuple) else [index]
    consuming = sum(1 for i in items if i is not None and i is not Ellipsis)
    d = 0
    for item in items:
        if item is None:
            continue
        if item is Ellipsis:
            d += rank - consuming
            continue
        full = isinstance(item, slice) and item == slice(None, None, None)
        if d in axes and not full:
            return "indexes a channel axis by number"
        d += 1
    return ""


def _varying(idx: torch.Tensor) -> list[int]:
    return [
        d
        for d in range(idx.dim())
        if idx.shape[d] > 1 and not bool((idx == idx.narrow(d, 0, 1)).all())
    ]


def _from_index(
    cg, node: Node, out: torch.Tensor, c: Chan, axes: list[int] | None = None, move: bool = False
):
    """``node``'s variables from ``out``, an index tensor into ``c``'s arrays. A move (view,
    permute, chunk, slicing, ...) must keep every channel and not split a channel axis:
    after a removal the op runs on fewer channels, and only a move that carries whole channel
    axes (permute, flatten with the axes after it) puts each one where it was."""
    if tuple(out.shape) != tuple(node.shape):
        _opaque(cg, node, f"'{node.name}' not understood")
        return
    axes = _varying(out) if axes is None else axes
    if move and c.var.numel() > 1:
        kept = out.unique().numel() == c.var.numel()
        if not kept or len(axes) > len(c.axes):
            what = "splits the channel axis" if kept else "takes some of the channels"
            reason = f"'{node.name}' {what} (its sizes would not follow a removal)"
            cg.pin(c.var, reason)
            _new(cg, node, (), pinned=reason)
            return
    comp = out
    for d in range(out.dim()):
        if d not in axes:
            comp = comp.narrow(d, 0, 1)
    flat = comp.reshape([out.shape[d] for d in axes])
    cg.chans[node] = Chan(
        tuple(axes),
        c.var.reshape(-1)[flat],
        c.known.reshape(-1)[flat],
        c.value.reshape(-1)[flat],
    )


def _cat(cg: ChannelGraph, node: Node) -> None:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not all(is_channel_tensor(t) for t in tensors):
        _opaque(cg, node, f"'{node.name}' concatenates what is not understood")
        return
    chans = [_chan(cg, t) for t in tensors]
    offset, pieces = 0, []
    for t, c in zip(tensors, chans):
        idx = torch.arange(c.var.numel()).reshape(c.embedded(len(t.shape))).expand(t.shape)
        pieces.append(idx + offset)
        offset += c.var.numel()
    merged = Chan(
        (0,),
        torch.cat([c.var.reshape(-1) for c in chans]),
        torch.cat([c.known.reshape(-1) for c in chans]),
        torch.cat([c.value.reshape(-1) for c in chans]),
    )
    _from_index(cg, node, torch.cat(pieces, dim=dim), merged)


def _function(cg: ChannelGraph, node: Node) -> None:
    fn, x = node.target, _first(node)
    method = node.op == "call_method"
    if (method and fn in HARMLESS_METHODS) or (not method and fn is getattr):
        return  # x.size(), x.shape, x.dtype: read no values
    if _is_multi(node) and x is not None:
        _pieces(cg, node, x)
    elif not method and fn is operator.getitem and node.args[0] in cg.pieces:
        idx, c = cg.pieces[node.args[0]]
        i = node.args[1]
        if isinstance(i, int) and -len(idx) <= i < len(idx):
            _from_index(cg, node, idx[i], c, move=True)
    elif not method and fn in CATS:
        _cat(cg, node)
    elif (method and fn in BINARY_METHODS) or (not method and fn in BINARY):
        _binary(cg, node, BINARY_METHODS[fn] if method else BINARY[fn])
    elif not method and fn is operator.truediv and not is_channel_tensor(_second(node)):
        _binary(cg, node, torch.div)
    elif x is None or not is_channel_tensor(node):
        if any(is_channel_tensor(a) for a in tensor_args(node)) or is_channel_tensor(node):
            _opaque(cg, node, f"'{node.name}' not understood")
    elif len([a for a in tensor_args(node) if is_channel_tensor(a)]) != 1:
        _opaque(cg, node, f"'{node.name}' reads several tensors")
    elif (method and fn in RESHAPE_LIKE) or (not method and fn in (torch.flatten, torch.reshape)):
        _move(cg, node, x, lambda t: t.reshape(node.shape))
    elif (method and fn in MOVES) or (not method and fn in MOVE_FUNCTIONS):
        _replay(cg, node, x)
    elif (method and fn in POINTWISE_METHODS) or (
        not method and (fn in POINTWISE_FUNCTIONS or fn in DROPOUTS)
    ):
        c = _chan(cg, x)
        if not method and fn in DROPOUTS:
            _same(cg, node, c, c.zero, c.value * c.zero)  # training or not, a zero stays zero
        else:
            call = (lambda t: getattr(t, fn)(*node.args[1:], **node.kwargs)) if method else fn
            rest = () if method else node.args[1:]
            _same(cg, node, c, *_probe(node, x, c, call, *rest, **({} if method else node.kwargs)))
    elif (not method and fn in CONST_POOL_FUNCTIONS) or (method and fn in ("mean", "amax")):
        _reduce(cg, node, x)
    else:
        _opaque(cg, node, f"'{node.name}' not understood")


MULTI = {"chunk", "split", "unbind", "tensor_split", "split_with_sizes"}


def _is_multi(node: Node) -> bool:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return node.op in ("call_method", "call_function") and name in MULTI and node.shape is None


def _pieces(cg: ChannelGraph, node: Node, x: Node) -> None:
    """chunk / split / unbind: the index tensor is cut the same way; ``getitem`` takes a piece."""
    rest = node.args[1:]
    if any(isinstance(a, Node) for a in rest) or any(
        isinstance(v, Node) for v in node.kwargs.values()
    ):
        cg.pin(_chan(cg, x).var, f"'{node.name}' not understood")
        return
    c = _chan(cg, x)
    idx = torch.arange(c.var.numel()).reshape(c.embedded(len(x.shape))).expand(x.shape)
    if node.op == "call_method":
        out = getattr(idx, node.target)(*rest, **node.kwargs)
    else:
        out = node.target(idx, *rest, **node.kwargs)
    cg.pieces[node] = (list(out), c)


def _second(node: Node):
    return node.args[1] if len(node.args) > 1 else None


def _replay(cg: ChannelGraph, node: Node, x: Node) -> None:
    rest = node.args[1:]
    if any(isinstance(a, Node) for a in rest) or any(
        isinstance(v, Node) for v in node.kwargs.values()
    ):
        _opaque(cg, node, f"'{node.name}' not understood")
        return
    if node.op == "call_method":
        name = node.target
        if name in ("to", "float", "type_as", "clone", "detach", "contiguous"):
            _same(cg, node, _chan(cg, x))
            return
        _move(cg, node, x, lambda t: getattr(t, name)(*rest, **node.kwargs))
    else:
        _move(cg, node, x, lambda t: node.target(t, *rest, **node.kwargs))


def _reduce(cg: ChannelGraph, node: Node, x: Node) -> None:
    """A pool, mean or max over axes that hold no variable keeps the variables (and, for a mean
    or max, the constants); over one that does: pinned."""
    c = _chan(cg, x)
    a, b = tuple(x.shape), tuple(node.shape)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if len(a) == len(b):
        if all(a[d] == b[d] for d in c.axes):
            _same(cg, node, c)
            return
    elif isinstance(dims, (int, tuple, list)):
        gone = sorted({d % len(a) for d in _tuple(dims)})
        if not set(gone) & set(c.axes) and len(b) == len(a) - len(gone):
            axes = tuple(d - sum(1 for g in gone if g < d) for d in c.axes)
            cg.chans[node] = Chan(axes, c.var, c.known, c.value)
            return
    _opaque(cg, node, f"'{node.name}' reduces {list(a)} to {list(b)} across channels")


def _binary(cg: ChannelGraph, node: Node, fn) -> None:
    a, b = (tuple(node.args) + (None, None))[:2]
    if node.kwargs or not is_channel_tensor(node):
        _opaque(cg, node, f"'{node.name}' not understood")
        return
    out_shape = node.shape
    parts = []
    for t in (a, b):
        if is_channel_tensor(t):
            c = _chan(cg, t)
            if len(t.shape) > len(out_shape):
                _opaque(cg, node, f"'{node.name}' not understood")
                return
            lead = len(out_shape) - len(t.shape)
            shape = [1] * lead + c.embedded(len(t.shape))
            idx = torch.arange(c.var.numel()).reshape(shape).expand(out_shape)
            parts.append((idx, c))
        elif isinstance(t, (int, float)) and not isinstance(t, bool):
            parts.append((None, float(t)))
        else:
            _opaque(cg, node, f"'{node.name}' mixes a tensor with a non-number")
            return
    chans = [c for idx, c in parts if idx is not None]
    if len(chans) == 1:
        (idx, c), other = [(i, c) for i, c in parts if i is not None][0], None
        const = [c for i, c in parts if i is None][0]
        _from_index(cg, node, idx, c)
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
    axes = sorted(set(_varying(ia)) | set(_varying(ib)))
    _from_index(cg, node, ia, ca, axes)
    left = cg.chans[node]
    _from_index(cg, node, ib, cb, axes)
    right = cg.chans[node]
    cg.union(left.var, right.var)
    known = left.known & right.known
    value = fn(left.value, right.value)
    if fn is torch.mul:  # zero times anything is zero
        known = known | left.zero | right.zero
        value = torch.where(left.zero | right.zero, 0.0, value)
    cg.chans[node] = Chan(left.axes, left.var, known, torch.where(known, value, 0.0))
