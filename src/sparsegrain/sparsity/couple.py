"""Coupled filters (``sparsity.couple``): layers whose outputs are summed share one filter mask.

Why. In a ResNet the stem conv, the last conv of every block and the stage's downsample conv all
write one residual stream: their outputs are added together. Compaction removes a stream channel
only when every writer has dropped it (``compact.plan``), so when each writer picks its own
filters under the ``filter`` structure, few channels are dropped by all of them and the pruned
model stays large. With ``couple`` the writers of a stream form a **coupled set** and get one
filter mask, chosen from all of them together (as Torch-Pruning's dependency groups and
StructADMM's channel pruning of coupled layers do): every dropped filter is then a removed
channel of the stream.

Which layers. Read off the ``torch.fx`` graph, never guessed from names. A sum node is
``operator.add``/``iadd``/``sub``/``isub``, ``torch.add``/``torch.sub`` or a tensor's
``.add``/``.add_``/``.sub``/``.sub_``. Each of its tensor operands is followed back through ops
that keep channel ``k`` at channel ``k`` (BatchNorm, pointwise activations, dropout, identity,
max/average pooling) and through other sum nodes (chains: a block's output, after its ReLU, is
summed again in the next block) to the Conv/Linear calls that wrote it. The writers of one sum
are coupled, and sets that share a writer merge. A set is used only when every member is pruned
with the ``filter`` structure and written by Conv/Linear layers alone; otherwise its layers are
pruned as before and the report says why (a member left dense or excluded, a member with another
structure, a member called more than once, an operand that is not a layer's output). A model
that ``torch.fx`` cannot trace gets no coupling and a note on its layers.

The rule (one mask per set). Output channel ``k`` of the set scores

    score_k = sum over members m of  score_m(W_m[k, :, :, :]) / E_m ** size_exponent(score_m)

with ``score_m`` the member's own score (``sparsity.score`` or an override; ``l1``: sum of |w|,
``l2``: the L2 norm) and ``E_m`` its filter size ``C*R*S``: dividing by ``E`` (l1) or ``sqrt(E)``
(l2) makes it the mean magnitude or the RMS of the filter, so a 1x1 downsample conv weighs as much
as a 3x3 conv (the same normalisation as global selection, ``structures.global_sparsities``). The
set's sparsity is the size-weighted mean (weights: the members' numbers of weights) of its
members' sparsities at that moment (their targets under ``scope: layer``, the global selection's
per-layer sparsities under ``scope: global``); the set keeps ``keep_count(K, s)`` channels, the
highest scores, ties to the lower index (``structures.select_top``), and every member gets that
filter mask. A pruned filter has score 0 in every member, so gradual methods keep it pruned.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core.fx import (
    CONST_POOLS,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    untraced_note,
)
from ..structures import get_score, group_scores, keep_count, select_top, shape_4d
from .masking import LAYER_TYPES, Layer

NOTE = "not coupled: "
SUMS = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
SUM_METHODS = {"add", "add_", "sub", "sub_"}
PASS_MODULES = (_BatchNorm, nn.AvgPool1d, nn.AvgPool2d, *POINTWISE_MODULES, *CONST_POOLS)
PASS_FUNCTIONS = POINTWISE_FUNCTIONS | {
    nn.functional.max_pool1d,
    nn.functional.max_pool2d,
    nn.functional.avg_pool1d,
    nn.functional.avg_pool2d,
}


def find_sets(model: nn.Module) -> list[tuple[list[str], list[str]]]:
    """The coupled sets of ``model``'s Conv/Linear layers: ``(members in model order, reasons it
    cannot be coupled whatever the recipe)`` for every set of two or more writers (rule in the
    module doc). Raises whatever ``torch.fx`` raises when the model cannot be traced."""
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    layer_types = tuple(c for cs in LAYER_TYPES.values() for c in cs)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    others: dict[str, list[str]] = {}  # first writer of a sum -> its operands that are no layer
    memo: dict[fx.Node, tuple[set[str], list[str]]] = {}
    for node in graph.nodes:
        if not _is_sum(node):
            continue
        writers, foreign = _writers(node, modules, layer_types, memo)
        if not writers:
            continue
        first, *rest = sorted(writers)
        for w in rest:
            parent[find(w)] = find(first)
        others.setdefault(first, []).extend(foreign)
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    order = {name: i for i, name in enumerate(modules)}
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=order.__getitem__)
        reasons = [r for m in members for r in others.get(m, [])]
        reasons += [f"'{m}' is called {calls[m]} times" for m in members if calls.get(m, 0) > 1]
        out.append((members, list(dict.fromkeys(reasons))))
    return sorted(out, key=lambda s: order[s[0][0]])


def _is_sum(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in SUMS) or (
        node.op == "call_method" and node.target in SUM_METHODS
    )


def _passes(node: fx.Node, modules) -> bool:
    """Whether ``node`` maps its first argument's channel ``k`` to its own channel ``k``."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    rest: list[fx.Node] = []
    fx.node.map_arg((node.args[1:], node.kwargs), lambda n: rest.append(n) or n)
    if rest:  # another tensor enters: not a per-channel map of the first
        return False
    if node.op == "call_module":
        return isinstance(modules.get(node.target), PASS_MODULES)
    if node.op == "call_function":
        return node.target in PASS_FUNCTIONS
    return node.op == "call_method" and node.target in POINTWISE_METHODS


def _writers(node, modules, layer_types, memo) -> tuple[set[str], list[str]]:
    """``(layers whose output reaches node's channels, descriptions of other sources)``."""
    if not isinstance(node, fx.Node):
        return set(), []  # a number added to a tensor: no channel writer
    if node in memo:
        return memo[node]
    if node.op == "call_module" and isinstance(modules.get(node.target), layer_types):
        out: tuple[set[str], list[str]] = ({node.target}, [])
    elif _is_sum(node):
        writers: set[str] = set()
        foreign: list[str] = []
        for arg in list(node.args) + list(node.kwargs.values()):
            w, f = _writers(arg, modules, layer_types, memo)
            writers |= w
            foreign += f
        out = (writers, foreign)
    elif _passes(node, modules):
        out = _writers(node.args[0], modules, layer_types, memo)
    else:
        what = node.target if node.op == "call_module" else node.name
        out = (set(), [f"'{what}' ({node.op}) is summed with them"])
    memo[node] = out
    return out


def assign(layers: Sequence[Layer], model: nn.Module, enabled: bool) -> str:
    """Find the coupled sets and mark their members (``Layer.coupled``), or note why a set is not
    coupled (``Layer.couple_note``). Returns a note for the whole model ('' unless it could not be
    traced)."""
    if not enabled:
        return ""
    pruned = [layer for layer in layers if layer.structure is not None]
    try:
        sets = find_sets(model)
    except Exception as e:  # noqa: BLE001 (fx raises many kinds; any of them means "not traced")
        note = untraced_note(NOTE, e)
        for layer in pruned:
            layer.couple_note = note
        return note
    by_name = {layer.name: layer for layer in layers}
    for members, reasons in sets:
        found = [by_name.get(m) for m in members]
        reason = "; ".join(reasons) or _refusal(members, found)
        for layer in found:
            if layer is None or layer.structure is None:
                continue
            if reason:
                layer.couple_note = NOTE + reason
            else:
                layer.coupled = tuple(members)
    return ""


def _refusal(members: list[str], found: list[Layer | None]) -> str:
    """Why a set of layers, each summed into the same tensor, cannot share one filter mask."""
    for name, layer in zip(members, found):
        if layer is None:
            return f"'{name}' is not a targeted layer (sparsity.types)"
        if layer.structure is None:
            return f"'{name}' is not pruned ({layer.note or 'left dense'})"
    if not all(layer.structure.whole_filters for layer in found):
        specs = sorted({layer.structure.spec for layer in found})
        return f"only 'filter' layers are coupled, the set has {', '.join(specs)}"
    ks = sorted({layer.shape[0] for layer in found})
    if len(ks) > 1:
        return f"filter counts differ ({', '.join(map(str, ks))})"
    return ""


def channel_scores(members: Sequence[Layer], weights: Mapping[str, Tensor], score=None) -> Tensor:
    """``(K,)`` float64: the coupled score of every output channel (rule in the module doc);
    ``score`` overrides the members' own scores (ADMM's projection uses l2)."""
    total = None
    for layer in members:
        w = weights[layer.name]
        sc = get_score(score if score is not None else layer.score)
        _, c, r, s = shape_4d(w.shape)
        v = group_scores(w, layer.structure, sc).reshape(-1).to(torch.float64)
        v = v / float(c * r * s) ** sc.size_exponent
        total = v if total is None else total + v.to(total.device)
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
        chosen = select_top(scores.reshape(1, -1), keep)
        for m in members:
            wm = weights[m.name]
            mask = m.structure.expand(chosen.to(wm.device), shape_4d(wm.shape))
            out[m.name] = mask.reshape(wm.shape)
    return out


def note(layer: Layer) -> str:
    """``coupled with: a, b`` (the other members) for a coupled layer, else why it is not."""
    if layer.coupled:
        return "coupled with: " + ", ".join(m for m in layer.coupled if m != layer.name)
    return layer.couple_note
