"""Which channels compaction removes, and the constants it folds into the layers that stay.

The rule (exact, not approximate). A channel (a class of variables, see ``graph.channels``) is
removed when it is not pinned and, for **every** Conv/Linear input channel it is read as, one of
these holds:

1. the reader ignores it: its weights for that input channel are all zero; or
2. the tensor's channel is exactly zero everywhere (e.g. a zeroed filter whose BN shift
   ``beta - gamma*mean/sqrt(var+eps)`` is 0, or <= 0 before a ReLU); or
3. the tensor's channel is a constant ``c`` and the reader has no zero padding (a Linear, a 1x1
   conv, any conv with padding 0): then every output position of output channel ``j`` gets
   exactly ``c * sum_rs W[j, k, r, s]``, which is folded into the reader's bias, or into the
   running mean of the BatchNorm that is its only consumer (``mean -= delta``).

A constant read through zero padding is *not* removed: at the border the padded taps see 0, not
``c``, so the contribution varies with position and no bias reproduces it. Every other channel is
kept. The writers of a channel (Conv/Linear filters, depthwise filters), the BatchNorms and the
parameters (layer scales) on it lose it too, whatever their values: nobody observes them.
A layer keeps at least one output channel.

``ideal=True`` plans the removal of every channel that is zero or constant for its readers or
ignored by them, or whose writers' filters are all zero, pinned or not (LayerNorm, splitting
views, padding): what a count of zero filters promises. Grouped convs stay whole even there
(a group cannot lose one channel). It is never built for use, only counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ...graph import ChannelGraph, layer_weight

NATURAL_PINS = ("model input", "model output")


@dataclass
class LayerChannels:
    """What compaction keeps of one layer: output and input channel indices (``None``: all).

    ``kind``: "conv" | "linear" | "norm" | "param" (a tensor sliced along ``axis``)."""

    kind: str
    out: list[int] | None = None
    inp: list[int] | None = None  # conv / linear
    bias: bool = False  # conv / linear: has a bias after compaction
    axis: int = 0  # param

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, "out": self.out, "in": self.inp, "bias": self.bias}
        if self.kind == "param":
            d["axis"] = self.axis
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerChannels:
        return cls(
            kind=d["kind"],
            out=d.get("out"),
            inp=d.get("in"),
            bias=bool(d.get("bias")),
            axis=int(d.get("axis", 0)),
        )


@dataclass
class Plan:
    layers: dict[str, LayerChannels]  # only what changes
    bias_delta: dict[str, torch.Tensor] = field(default_factory=dict)  # (K,) added to the output
    mean_delta: dict[str, torch.Tensor] = field(default_factory=dict)  # (C,) taken from the mean
    notes: dict[str, list[str]] = field(default_factory=dict)


def ignored_inputs(weight: torch.Tensor) -> torch.Tensor:
    """(C,) True where input channel ``c`` has only zero weights (``weight`` is (K, C, ...))."""
    w = weight.detach().cpu()
    return (w == 0).transpose(0, 1).reshape(w.shape[1], -1).all(dim=1)


def plan_compaction(cg: ChannelGraph, ideal: bool = False) -> Plan:
    pins = cg.pin_reasons()
    removable: dict[int, bool] = {}
    blocked: dict[int, bool] = {}
    for r in cg.readers:
        m = cg.modules[r.layer]
        roots = cg.roots(r.chan.var).tolist()
        if r.layer in cg.depthwise:
            ok = torch.ones_like(r.chan.known)  # a depthwise filter is its own channel
        else:
            ignored = ignored_inputs(layer_weight(m))
            foldable = r.foldable and cg.calls[r.layer] == 1
            ok = ignored | r.chan.zero | (r.chan.known & (foldable or ideal))
        for root, good, known in zip(roots, ok.tolist(), r.chan.known.tolist()):
            removable[root] = removable.get(root, True) and bool(good)
            blocked[root] = blocked.get(root, False) or (not good and known)
    if ideal:  # what the masks alone promise: a zero filter goes, pinned or not
        hard = {cg.find(v) for v in cg.structural}
        pins = {
            root: why for root, why in pins.items() if set(why) <= set(NATURAL_PINS) or root in hard
        }
        for name, outs in cg.writers.items():
            w = layer_weight(cg.modules[name])
            dead = (w.reshape(w.shape[0], -1) == 0).all(dim=1)
            for root, d in zip(cg.roots(outs[0]).tolist(), dead.tolist()):
                if d and root not in pins:
                    removable[root] = True
    keep = {root: not removable.get(root, False) or root in pins for root in _all_roots(cg)}
    _at_least_one(cg, keep)
    plan = Plan(layers={})
    _folds(cg, plan, keep)
    _specs(cg, plan, keep)
    _notes(cg, plan, pins, keep, blocked)
    return plan


def _all_roots(cg: ChannelGraph) -> set[int]:
    roots: set[int] = set()
    for r in cg.readers:
        roots.update(cg.roots(r.chan.var).tolist())
    for outs in cg.writers.values():
        roots.update(cg.roots(outs[0]).tolist())
    for vars_ in cg.norms.values():
        roots.update(cg.roots(vars_[0]).tolist())
    for _axis, var in cg.params.values():
        roots.update(cg.roots(var).tolist())
    return roots


def _at_least_one(cg: ChannelGraph, keep: dict[int, bool]) -> None:
    """An empty layer is not a layer: each keeps at least one output and one input channel."""
    for roots in [cg.roots(outs[0]).tolist() for outs in cg.writers.values()] + [
        cg.roots(r.chan.var).tolist() for r in cg.readers
    ]:
        if roots and not any(keep[r] for r in roots):
            keep[roots[0]] = True


def _mask(cg: ChannelGraph, var: torch.Tensor, keep: dict[int, bool]) -> torch.Tensor:
    return torch.tensor([keep[r] for r in cg.roots(var).tolist()], dtype=torch.bool)


@torch.no_grad()
def _folds(cg: ChannelGraph, plan: Plan, keep: dict[int, bool]) -> None:
    for r in cg.readers:
        if r.layer in cg.depthwise:
            continue
        m = cg.modules[r.layer]
        w = layer_weight(m)
        gone = ~_mask(cg, r.chan.var, keep) & ~ignored_inputs(w) & r.chan.known
        gone = gone & (r.chan.value != 0)
        if not gone.any():
            continue
        w64 = w.to("cpu", torch.float64)
        w_sum = w64.reshape(w64.shape[0], w64.shape[1], -1).sum(dim=2)  # (K, C)
        delta = w_sum[:, gone] @ r.chan.value[gone]  # (K,): what the removed constants added
        bn = _only_norm_user(cg, r.layer)
        if bn is not None:
            plan.mean_delta[bn] = plan.mean_delta.get(bn, 0) + delta
        else:
            plan.bias_delta[r.layer] = plan.bias_delta.get(r.layer, 0) + delta


def _only_norm_user(cg: ChannelGraph, layer: str) -> str | None:
    """The BatchNorm (with running stats, called once) that alone consumes the layer's output."""
    nodes = cg.layer_nodes.get(layer, [])
    if len(nodes) != 1 or len(nodes[0].users) != 1 or nodes[0].users[0].op != "call_module":
        return None
    user = nodes[0].users[0]
    name = user.target
    m = cg.modules[name]
    ok = isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
    ok = ok and type(m).forward is _BatchNorm.forward  # a subclass may act before its stats
    return name if ok and cg.calls.get(name) == 1 and user.args[0] is nodes[0] else None


def _indices(keep: torch.Tensor | None) -> list[int] | None:
    if keep is None or bool(keep.all()):
        return None
    return [int(i) for i in keep.nonzero().flatten()]


def _specs(cg: ChannelGraph, plan: Plan, keep: dict[int, bool]) -> None:
    inputs = {}
    for r in cg.readers:
        inputs.setdefault(r.layer, r.chan.var)
    for name, outs in cg.writers.items():
        m = cg.modules[name]
        if name in cg.grouped:  # pinned: kept whole
            continue
        dw = name in cg.depthwise
        kind = "conv" if hasattr(m, "kernel_size") else "linear"
        spec = LayerChannels(
            kind=kind,
            out=_indices(_mask(cg, outs[0], keep)),
            inp=None if dw else _indices(_mask(cg, inputs[name], keep)),
            bias=getattr(m, "bias", None) is not None or name in plan.bias_delta,
        )
        if spec.out is not None or spec.inp is not None or spec.bias != (m.bias is not None):
            plan.layers[name] = spec
    for name, vars_ in cg.norms.items():
        out = _indices(_mask(cg, vars_[0], keep))
        if out is not None:
            plan.layers[name] = LayerChannels(kind="norm", out=out)
    for name, (axis, var) in cg.params.items():
        out = _indices(_mask(cg, var, keep))
        if out is not None:
            plan.layers[name] = LayerChannels(kind="param", out=out, axis=axis)


def _notes(cg: ChannelGraph, plan: Plan, pins, keep, blocked) -> None:
    """A note on every layer that keeps a zero filter (or a removable-looking channel), naming
    the op or the rule that pinned it."""

    def add(name: str, text: str) -> None:
        if text not in plan.notes.get(name, []):
            plan.notes.setdefault(name, []).append(text)

    live: dict[int, list[str]] = {}  # channel -> layers writing it with a non-zero filter
    for name, outs in cg.writers.items():
        w = layer_weight(cg.modules[name])
        alive = (w.reshape(w.shape[0], -1) != 0).any(dim=1).tolist()
        for root, a in zip(cg.roots(outs[0]).tolist(), alive):
            if a:
                live.setdefault(root, []).append(name)
    for name, outs in cg.writers.items():
        w = layer_weight(cg.modules[name])
        dead = (w.reshape(w.shape[0], -1) == 0).all(dim=1).tolist()
        roots = cg.roots(outs[0]).tolist()
        kept_dead = [(root, i) for i, (root, d) in enumerate(zip(roots, dead)) if d and keep[root]]
        if not kept_dead:
            continue
        why: dict[str, int] = {}
        for root, _ in kept_dead:
            odd = [r for r in pins.get(root, []) if r not in NATURAL_PINS]
            if odd:
                reason = odd[0]
            elif root in pins:
                reason = pins[root][0]
            elif blocked.get(root):
                reason = (
                    "constant but non-zero (the BN shift or the bias of a zeroed filter) and "
                    "read through zero padding, where no bias is exact (training with "
                    "sparsity.prune_bn makes such BN channels exactly 0)"
                )
            elif live.get(root):
                others = ", ".join(f"'{n}'" for n in live[root][:3])
                reason = f"the channel is also written by {others}, whose filter is not zero"
            else:
                reason = "a reader uses it"
            why[reason] = why.get(reason, 0) + 1
        for reason, n in why.items():
            add(name, f"{n} zero filter(s) kept: {reason}")
