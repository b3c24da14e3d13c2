"""Which channels compaction removes, and the constants it folds into the layers that stay.

The rule (exact, not approximate). Channel ``k`` of a group (see ``graph.py``) is removed when,
for **every** Conv/Linear that reads a tensor of the group, one of these holds:

1. the reader ignores it: its weights for input channel ``k`` are all zero; or
2. the tensor's channel ``k`` is exactly zero everywhere (e.g. a zeroed filter whose BN shift
   ``beta - gamma*mean/sqrt(var+eps)`` is 0, or <= 0 before a ReLU); or
3. the tensor's channel ``k`` is a constant ``c`` and the reader has no zero padding (a Linear,
   a 1x1 conv, any conv with padding 0): then every output position of output channel ``j`` gets
   exactly ``c * sum_rs W[j, k, r, s]``, which is folded into the reader's bias, or into the
   running mean of the BatchNorm that is its only consumer (``mean -= delta``).

A constant read through zero padding is *not* removed: at the border the padded taps see 0, not
``c``, so the contribution varies with position and no bias reproduces it. Every other channel is
kept, and so is every channel of a pinned group. The writers of a group (Conv/Linear outputs,
BatchNorms) lose the removed channels too, whatever their weights: nobody observes them. On a
residual stream this is the "all writers and readers agree" condition, checked per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from ...core.fx import NORMS
from .graph import ChannelFlow

NATURAL_PINS = ("model input", "model output")


@dataclass
class LayerChannels:
    """What compaction keeps of one layer: output and input channel indices (``None``: all)."""

    kind: str  # "conv" | "linear" | "norm"
    out: list[int] | None = None
    inp: list[int] | None = None  # conv / linear
    bias: bool = False  # conv / linear: has a bias after compaction

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "out": self.out, "in": self.inp, "bias": self.bias}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerChannels:
        return cls(kind=d["kind"], out=d.get("out"), inp=d.get("in"), bias=bool(d.get("bias")))


@dataclass
class Plan:
    layers: dict[str, LayerChannels]  # only layers that change
    bias_delta: dict[str, torch.Tensor] = field(default_factory=dict)  # (K,) added to the output
    mean_delta: dict[str, torch.Tensor] = field(default_factory=dict)  # (C,) taken from the mean
    notes: dict[str, list[str]] = field(default_factory=dict)


def _ignored(weight: torch.Tensor) -> torch.Tensor:
    """(C,) True where input channel ``c`` has only zero weights (``weight`` is (K, C, ...))."""
    w = weight.detach().cpu()
    return (w == 0).transpose(0, 1).reshape(w.shape[1], -1).all(dim=1)


def plan_compaction(flow: ChannelFlow) -> Plan:
    pins = flow.pin_reasons()
    removable: dict[fx.Node, torch.Tensor] = {}
    blocked: dict[fx.Node, torch.Tensor] = {}
    for r in flow.readers:
        root = flow.find(r.node)
        if root in pins:
            continue
        vals = flow.values[r.node]
        ignored = _ignored(flow.modules[r.layer].weight)
        foldable = r.foldable and flow.calls[r.layer] == 1
        ok = ignored | vals.zero | (vals.known & foldable)
        c = ok.numel()
        removable[root] = removable.get(root, torch.ones(c, dtype=torch.bool)) & ok
        blocked[root] = blocked.get(root, torch.zeros(c, dtype=torch.bool)) | (~ok & vals.known)
    keep = _keep_sets(flow, pins, removable)
    plan = Plan(layers={})
    _folds(flow, plan, keep)
    _layer_specs(flow, plan, keep)
    _notes(flow, plan, pins, keep, blocked)
    return plan


def _keep_sets(flow, pins, removable) -> dict[fx.Node, torch.Tensor]:
    """Root -> (C,) bool of kept channels, for every unpinned group (at least one kept)."""
    roots = {flow.find(n) for n in flow.values}
    keep = {}
    for root in roots:
        if root in pins:
            continue
        rem = removable.get(root, torch.ones(flow.channels(root), dtype=torch.bool))
        k = ~rem
        if not k.any():  # an empty layer is not a layer: keep the first channel
            k[0] = True
        keep[root] = k
    return keep


@torch.no_grad()
def _folds(flow: ChannelFlow, plan: Plan, keep: dict[fx.Node, torch.Tensor]) -> None:
    for r in flow.readers:
        root = flow.find(r.node)
        if root not in keep:
            continue
        vals = flow.values[r.node]
        m = flow.modules[r.layer]
        gone = ~keep[root] & ~_ignored(m.weight) & vals.known & (vals.value != 0)
        if not gone.any():
            continue
        w = m.weight.detach().to("cpu", torch.float64)
        w_sum = w.reshape(w.shape[0], w.shape[1], -1).sum(dim=2)  # (K, C)
        delta = w_sum[:, gone] @ vals.value[gone]  # (K,): what the removed constants added
        bn = _only_norm_user(flow, r)
        if bn is not None:
            plan.mean_delta[bn] = plan.mean_delta.get(bn, 0) + delta
        else:
            plan.bias_delta[r.layer] = plan.bias_delta.get(r.layer, 0) + delta


def _only_norm_user(flow: ChannelFlow, r) -> str | None:
    """The BatchNorm (with running stats, called once) that alone consumes the reader's output."""
    out = flow.layer_io[r.layer][1]
    users = list(out.users)
    if flow.calls[r.layer] != 1 or len(users) != 1 or users[0].op != "call_module":
        return None
    name = users[0].target
    m = flow.modules[name]
    ok = type(m) in NORMS and m.track_running_stats and m.running_mean is not None
    return name if ok and flow.calls.get(name) == 1 else None


def _indices(keep: torch.Tensor | None) -> list[int] | None:
    if keep is None or bool(keep.all()):
        return None
    return [int(i) for i in keep.nonzero().flatten()]


def _layer_specs(flow: ChannelFlow, plan: Plan, keep: dict[fx.Node, torch.Tensor]) -> None:
    for name, (x, y) in flow.layer_io.items():
        m = flow.modules[name]
        spec = LayerChannels(
            kind="linear" if isinstance(m, torch.nn.Linear) else "conv",
            out=_indices(keep.get(flow.find(y))),
            inp=_indices(keep.get(flow.find(x))),
            bias=m.bias is not None or name in plan.bias_delta,
        )
        if spec.out is not None or spec.inp is not None or spec.bias != (m.bias is not None):
            plan.layers[name] = spec
    for name, node in flow.norms.items():
        out = _indices(keep.get(flow.find(node)))
        if out is not None:
            plan.layers[name] = LayerChannels(kind="norm", out=out)


def _notes(flow, plan: Plan, pins, keep, blocked) -> None:
    def add(name: str, text: str) -> None:
        if text not in plan.notes.get(name, []):
            plan.notes.setdefault(name, []).append(text)

    def reasons(root) -> str:
        odd = [r for r in dict.fromkeys(pins.get(root, [])) if r not in NATURAL_PINS]
        return "; ".join(odd)

    for name, (x, y) in flow.layer_io.items():
        if why := reasons(flow.find(x)):
            add(name, f"input channels kept: {why}")
        if why := reasons(flow.find(y)):
            add(name, f"output channels kept: {why}")
        root = flow.find(y)
        n_blocked = int(
            (blocked.get(root, torch.zeros(1, dtype=torch.bool)) & keep.get(root, True)).sum()
        )
        if root in keep and n_blocked:
            add(
                name,
                f"{n_blocked} output channel(s) kept: constant but non-zero (e.g. the BN shift "
                "of a zeroed filter) and read through zero padding, where no bias is exact "
                "(training with sparsity.prune_bn makes such BN channels exactly 0)",
            )
    for name, node in flow.norms.items():
        if why := reasons(flow.find(node)):
            add(name, f"channels kept: {why}")
