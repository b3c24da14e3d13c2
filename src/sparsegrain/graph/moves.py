"""Data movement and concatenation on channel variables: an op is replayed on a tensor of
variable indices instead of the data (``graph.channels`` has the rules)."""

from __future__ import annotations

import operator

import torch

from .channels import Chan, ChannelGraph, as_tuple, chan_of, fresh_chan, opaque, same
from .trace import Node, is_channel_tensor

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

MULTI = {"chunk", "split", "unbind", "tensor_split", "split_with_sizes"}


def move(cg: ChannelGraph, node: Node, x: Node, fn) -> None:
    """Data movement: run ``fn`` on an index tensor of ``x``'s variable positions."""
    c = chan_of(cg, x)
    idx = torch.arange(c.var.numel()).reshape(c.embedded(len(x.shape))).expand(x.shape)
    try:
        out = fn(idx)
    except Exception:  # noqa: BLE001 (an op we cannot replay on indices)
        opaque(cg, node, f"'{node.name}' not understood")
        return
    if isinstance(out, (tuple, list)):
        opaque(cg, node, f"'{node.name}' not understood")
        return
    out_axes = varying(out)
    if c.var.numel() > 1 and len(out_axes) <= len(c.axes) and (why := fixed(node, x, c, out_axes)):
        reason = f"'{node.name}' {why} (it would not follow a removal)"
        cg.pin(c.var, reason)
        fresh_chan(cg, node, (), pinned=reason)
        return
    from_index(cg, node, out, c, move=True)


def fixed(node: Node, x: Node, c: Chan, out_axes: list[int]) -> str:
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
        dims = {d % len(x.shape) for d in as_tuple(dims)}
        return (
            f"{'rolls' if name == 'roll' else 'narrows'} a channel axis"
            if dims & set(c.axes)
            else ""
        )
    if name == "getitem":
        return fixed_index(rest[0] if rest else None, len(x.shape), c.axes)
    return ""


def fixed_index(index, rank: int, axes: tuple[int, ...]) -> str:
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


def varying(idx: torch.Tensor) -> list[int]:
    return [
        d
        for d in range(idx.dim())
        if idx.shape[d] > 1 and not bool((idx == idx.narrow(d, 0, 1)).all())
    ]


def from_index(
    cg, node: Node, out: torch.Tensor, c: Chan, axes: list[int] | None = None, move: bool = False
):
    """``node``'s variables from ``out``, an index tensor into ``c``'s arrays. A move (view,
    permute, chunk, slicing, ...) must keep every channel and not split a channel axis:
    after a removal the op runs on fewer channels, and only a move that carries whole channel
    axes (permute, flatten with the axes after it) puts each one where it was."""
    if tuple(out.shape) != tuple(node.shape):
        opaque(cg, node, f"'{node.name}' not understood")
        return
    axes = varying(out) if axes is None else axes
    if move and c.var.numel() > 1:
        kept = out.unique().numel() == c.var.numel()
        if not kept or len(axes) > len(c.axes):
            what = "splits the channel axis" if kept else "takes some of the channels"
            reason = f"'{node.name}' {what} (its sizes would not follow a removal)"
            cg.pin(c.var, reason)
            fresh_chan(cg, node, (), pinned=reason)
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


def cat(cg: ChannelGraph, node: Node) -> None:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not all(is_channel_tensor(t) for t in tensors):
        opaque(cg, node, f"'{node.name}' concatenates what is not understood")
        return
    chans = [chan_of(cg, t) for t in tensors]
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
    from_index(cg, node, torch.cat(pieces, dim=dim), merged)


def is_multi(node: Node) -> bool:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return node.op in ("call_method", "call_function") and name in MULTI and node.shape is None


def pieces(cg: ChannelGraph, node: Node, x: Node) -> None:
    """chunk / split / unbind: the index tensor is cut the same way; ``getitem`` takes a piece."""
    rest = node.args[1:]
    if any(isinstance(a, Node) for a in rest) or any(
        isinstance(v, Node) for v in node.kwargs.values()
    ):
        cg.pin(chan_of(cg, x).var, f"'{node.name}' not understood")
        return
    c = chan_of(cg, x)
    idx = torch.arange(c.var.numel()).reshape(c.embedded(len(x.shape))).expand(x.shape)
    if node.op == "call_method":
        out = getattr(idx, node.target)(*rest, **node.kwargs)
    else:
        out = node.target(idx, *rest, **node.kwargs)
    cg.pieces[node] = (list(out), c)


def replay(cg: ChannelGraph, node: Node, x: Node) -> None:
    rest = node.args[1:]
    if any(isinstance(a, Node) for a in rest) or any(
        isinstance(v, Node) for v in node.kwargs.values()
    ):
        opaque(cg, node, f"'{node.name}' not understood")
        return
    if node.op == "call_method":
        name = node.target
        if name in ("to", "float", "type_as", "clone", "detach", "contiguous"):
            same(cg, node, chan_of(cg, x))
            return
        move(cg, node, x, lambda t: getattr(t, name)(*rest, **node.kwargs))
    else:
        move(cg, node, x, lambda t: node.target(t, *rest, **node.kwargs))
