"""Coupled filters (``sparsity.couple``): layers whose outputs are summed share one filter mask.

Why. In a ResNet the stem conv, the last conv of every block and the stage's downsample conv all
write one residual stream: their outputs are added together. Compaction removes a stream channel
only when every writer has dropped it (``compact.plan``), so when each writer picks its own
filters under the ``filter`` structure, few channels are dropped by all of them and the pruned
model stays large. With ``couple`` the writers of a stream form a **coupled set** and get one
filter mask, chosen from all of them together (as Torch-Pruning's dependency groups and
StructADMM's channel pruning of coupled layers do): every dropped filter is then a removed
channel of the stream.

Which layers. Read off the model's channel graph (``graph.channels``: torch.fx, else a run of the
model on an example input), never guessed from names: two layers are coupled when a filter of one
and a filter of the other are one channel (a residual add, a depthwise conv that carries its
producer's channels, a squeeze-excitation gate, ...), and sets that share a layer merge. A set is
used only when every member is pruned with a structure whose group is a whole filter. When a member
is left dense or excluded, its filters keep every channel of the set alive, so the other members'
filter pruning would save nothing compaction can remove: they are left dense too, and the report
names that member. When a member has another structure, the layers are pruned as before and the
report says why. A layer whose filters compaction can never remove (all of its channels pinned:
read by a LayerNorm, a grouped conv, an attention block, ...) is left dense, with the reason as its
note: its zeros would save nothing. A model that cannot be traced gets no coupling and a note on
its layers.

The rule (one mask per set). Output channel ``k`` of the set scores

    score_k = sum over members m of  score_m(W_m[k, :, :, :]) / E_m ** size_exponent(score_m)

(a channel shared by several filters of one member, or written by several members, sums all their
scores) with ``score_m`` the member's own score (``sparsity.score`` or an override; ``l1``: sum of
|w|, ``l2``: the L2 norm) and ``E_m`` its filter size ``C*R*S``: dividing by ``E`` (l1) or
``sqrt(E)`` (l2) makes it the mean magnitude or the RMS of the filter, so a 1x1 downsample conv
weighs as much as a 3x3 conv (the same normalisation as global selection,
``structures.global_sparsities``). The set's sparsity is the size-weighted mean (weights: the
members' numbers of weights) of its members' sparsities at that moment (their targets under
``scope: layer``, the global selection's per-layer sparsities under ``scope: global``); the set
keeps ``keep_count(n, s)`` of its ``n`` channels, the highest scores, ties to the lower index
(``structures.select_top``), and every member's filter is kept exactly when its channel is. A
pruned filter has score 0 in every member, so gradual methods keep it pruned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..core.fx import untraced_note
from ..graph import ChannelGraph, channel_graph
from ..structures import (
    Structure,
    Transposed,
    get_score,
    group_scores,
    keep_count,
    select_top,
    shape_4d,
)
from .masking import Layer

NOTE = "not coupled: "


def find_sets(model: nn.Module, example_inputs) -> list[tuple[list[str], list[str]]]:
    """The coupled sets of ``model``'s layers and, per set, its channels: ``(members in model
    order, channel ids)`` where ``ids[i][k]`` numbers the channel of member ``i``'s filter ``k``
    (0..n-1 over the set), for every set of two or more layers."""
    sets = _sets(channel_graph(model, example_inputs), dict(model.named_modules()))[0]
    return [(members, ids) for members, ids in sets if len(members) > 1]


def _sets(cg: ChannelGraph, modules) -> tuple[list, dict[str, str]]:
    order = {name: i for i, name in enumerate(modules)}
    pins = cg.pin_reasons()
    roots = {name: cg.roots(outs[0]).tolist() for name, outs in cg.writers.items()}
    owner: dict[int, str] = {}
    parent: dict[str, str] = {name: name for name in roots}

    def find(a: str) -> str:
        while parent[a] != a:
            a = parent[a]
        return a

    for name, rs in roots.items():
        for r in rs:
            if r in owner:
                parent[find(name)] = find(owner[r])
            else:
                owner[r] = name
    groups: dict[str, list[str]] = {}
    for name in roots:
        groups.setdefault(find(name), []).append(name)
    sets = []
    for members in groups.values():
        members.sort(key=order.__getitem__)
        numbers: dict[int, int] = {}
        ids = [[numbers.setdefault(r, len(numbers)) for r in roots[m]] for m in members]
        sets.append((members, ids))
    pinned = {}
    for name, rs in roots.items():
        why = [w for r in rs for w in pins.get(r, []) if w not in ("model input", "model output")]
        if rs and all(r in pins for r in rs) and why:
            pinned[name] = why[0]
    return sorted(sets, key=lambda st: order[st[0][0]]), pinned


def assign(layers: Sequence[Layer], model: nn.Module, enabled: bool, example_inputs=None) -> str:
    """Find the coupled sets and mark their members (``Layer.coupled``, ``Layer.extra
    ["channels"]``), leave dense the layers whose filters compaction cannot remove, or note why
    a set is not coupled (``Layer.couple_note``). Returns a note for the whole model ('' unless
    it could not be traced)."""
    if not enabled:
        return ""
    pruned = [layer for layer in layers if layer.structure is not None]
    if not pruned:
        return ""
    if example_inputs is None:
        note = NOTE + "no example input to trace the model with (pass example_inputs=)"
        for layer in pruned:
            layer.couple_note = note
        return note
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        cg = channel_graph(model, example_inputs)
        sets, pinned = _sets(cg, dict(model.named_modules()))
    except Exception as e:  # noqa: BLE001 (tracing raises many kinds; any means "not traced")
        note = untraced_note(NOTE, e)
        for layer in pruned:
            layer.couple_note = note
        return note
    finally:
        for m, mode in training.items():
            m.train(mode)
    by_name = {layer.name: layer for layer in layers}
    for name, why in pinned.items():
        layer = by_name.get(name)
        if layer is not None and layer.structure is not None and _units(layer):
            layer.structure = None
            layer.note = f"left dense: compaction cannot remove its filters ({why})"
    for members, ids in sets:
        if len(members) < 2:
            continue
        found = [by_name.get(m) for m in members]
        reason = _refusal(members, found)
        dense = _dense_member(members, found)
        for layer, chan in zip(found, ids):
            if layer is None or layer.structure is None or layer.structure.name == "head":
                continue  # heads go whole with their attention block, never by channel
            if dense and _units(layer):
                layer.structure = None
                layer.note = f"left dense: its filters are one channel with {dense}"
            elif reason:
                layer.couple_note = NOTE + reason
            else:
                layer.coupled = tuple(members)
                layer.extra["channels"] = chan
    return ""


def _out_view(layer: Layer, w: Tensor) -> tuple[Tensor, Structure]:
    """The weight as (out, in) with the structure on that view (Hugging Face ``Conv1D`` stores
    it (in, out), and its structure is ``Transposed``)."""
    if isinstance(layer.structure, Transposed):
        return w.t(), layer.structure.inner
    return w, layer.structure


def _units(layer: Layer) -> bool:
    """Whether the layer's groups are whole output units (filters, neurons), in any layout."""
    return _out_view(layer, layer.param)[1].whole_filters


def _dense_member(members: list[str], found: list[Layer | None]) -> str:
    """The set member left dense or not targeted, whose non-zero filters keep every channel of
    the set: pruning the others' filters saves nothing compaction can remove ('' if none)."""
    for name, layer in zip(members, found):
        if layer is None:
            return f"'{name}', which is not a targeted layer (sparsity.types)"
        if layer.structure is None:
            return f"'{name}', which is not pruned ({layer.note or 'left dense'})"
    return ""


def _refusal(members: list[str], found: list[Layer | None]) -> str:
    """Why a set of layers, each summed into the same tensor, cannot share one filter mask."""
    for name, layer in zip(members, found):
        if layer is None:
            return f"'{name}' is not a targeted layer (sparsity.types)"
        if layer.structure is None:
            return f"'{name}' is not pruned ({layer.note or 'left dense'})"
    if not all(_units(layer) for layer in found):
        specs = sorted({layer.structure.spec for layer in found})
        return f"only 'filter' layers are coupled, the set has {', '.join(specs)}"
    return ""


def channel_scores(members: Sequence[Layer], weights: Mapping[str, Tensor], score=None) -> Tensor:
    """``(n,)`` float64: the coupled score of every channel of the set (rule in the module
    doc); ``score`` overrides the members' own scores (ADMM's projection uses l2)."""
    n = 1 + max(max(layer.extra["channels"]) for layer in members)
    total = torch.zeros(n, dtype=torch.float64)
    for layer in members:
        w = weights[layer.name]
        sc = get_score(score if score is not None else layer.score)
        w, structure = _out_view(layer, w)
        _, c, r, s = shape_4d(w.shape)
        v = group_scores(w, structure, sc).reshape(-1).to("cpu", torch.float64)
        v = v / float(c * r * s) ** sc.size_exponent
        total.index_add_(0, torch.tensor(layer.extra["channels"]), v)
    return total


def set_sparsity(members: Sequence[Layer], sparsities: Mapping[str, float]) -> float:
    """The set's sparsity: its members' sparsities averaged with their numbers of weights."""
    sizes = [layer.param.numel() for layer in members]
    return sum(sparsities[m.name] * n for m, n in zip(members, sizes)) / sum(sizes)


def masks(
    layers: Sequence[Layer],
    weights: Mapping[str, Tensor],
    sparsities: Mapping[str, float],
    score=None,
) -> dict[str, Tensor]:
    """Bool masks of the pruned ``layers``: one shared filter mask per coupled set (rule in the
    module doc), each other layer's ``structure.mask`` as before. ``score`` overrides every
    layer's score."""
    out: dict[str, Tensor] = {}
    by_name = {layer.name: layer for layer in layers}
    for layer in layers:
        if layer.name in out:
            continue
        w = weights[layer.name]
        if not layer.coupled:
            sc = score if score is not None else layer.score
            out[layer.name] = layer.structure.mask(w, sparsities[layer.name], score=sc)
            continue
        members = [by_name[m] for m in layer.coupled]
        scores = channel_scores(members, weights, score)
        keep = keep_count(scores.numel(), set_sparsity(members, sparsities))
        chosen = select_top(scores.reshape(1, -1), keep).reshape(-1)
        for m in members:
            wm = weights[m.name]
            kept = chosen[torch.tensor(m.extra["channels"])].reshape(1, -1)
            view, structure = _out_view(m, wm)
            mask = structure.expand(kept.to(wm.device), shape_4d(view.shape)).reshape(view.shape)
            if view is not wm:  # a weight stored (in, out): the mask goes back to that layout
                mask = mask.t()
            out[m.name] = mask.reshape(wm.shape)
    return out


def note(layer: Layer) -> str:
    """``coupled with: a, b`` (the other members) for a coupled layer, else why it is not."""
    if layer.coupled:
        return "coupled with: " + ", ".join(m for m in layer.coupled if m != layer.name)
    return layer.couple_note
