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
  expand, concatenation) is run on a tensor of variable indices instead of the data, so
  wherever a value goes, its variable goes (``moves``). After a removal the op runs on fewer
  channels, so a move must carry whole channel axes: one that splits a channel axis (a
  channel shuffle's view, heads), takes some of the channels (chunk or a slice along it), or
  is written for the count it saw (a literal size, an index list, a roll) pins them.
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

from dataclasses import dataclass, field

import torch
from torch import nn

from .trace import (
    Graph,
    Node,
    is_channel_tensor,
    is_conv1d_transposed,
    tensor_args,
)


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


def fresh_chan(cg: ChannelGraph, node: Node, axes: tuple[int, ...], pinned: str = "") -> Chan:
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


def chan_of(cg: ChannelGraph, node: Node) -> Chan:
    """The node's variables (one pinned variable for a tensor nothing is known about)."""
    if node not in cg.chans:
        fresh_chan(cg, node, (), pinned=f"'{node.name}' not understood")
    return cg.chans[node]


def opaque(cg: ChannelGraph, node: Node, reason: str) -> None:
    """An op not understood: what it reads is kept; what it writes is one pinned variable (a
    reader of it along an axis gets pinned variables there, see ``_along``)."""
    for arg in tensor_args(node):
        if is_channel_tensor(arg):
            cg.pin(chan_of(cg, arg).var, reason)
    if is_channel_tensor(node):
        fresh_chan(cg, node, (), pinned=reason)


def along(cg: ChannelGraph, x: Node, axis: int) -> Chan:
    """``x``'s variables as one per index of ``axis`` (1-D arrays): variables on other axes are
    unified per slice; a tensor with no variables on ``axis`` gets pinned fresh ones."""
    c = chan_of(cg, x)
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


def same(cg: ChannelGraph, node: Node, chan: Chan, known=None, value=None) -> None:
    cg.chans[node] = Chan(
        chan.axes,
        chan.var,
        chan.known if known is None else known,
        chan.value if value is None else value,
    )


@torch.no_grad()
def probe(node: Node, x: Node, chan: Chan, fn, *rest, **kw) -> tuple[torch.Tensor, torch.Tensor]:
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


def first_tensor(node: Node) -> Node | None:
    arg = node.args[0] if node.args else None
    return arg if is_channel_tensor(arg) else None


# -- the visitor ---------------------------------------------------------------------------------


def as_tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def layer_weight(m: nn.Module) -> torch.Tensor:
    """The weight as ``(out, in, ...)`` (Hugging Face ``Conv1D`` stores it ``(in, out)``)."""
    w = m.weight.detach()
    return w.t() if is_conv1d_transposed(m) else w
