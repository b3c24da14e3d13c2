"""One head mask per attention module (the ``head`` structure).

The projections of one attention module (``Layer.block``: its q, k, v rows and its output
columns, ``attention.find_attention``) drop the same heads. Head ``h`` of the module scores

    score_h = sum over parts p of  score_p(group h of W_p) / E_p ** size_exponent(score_p)

with ``score_p`` the part's score (``sparsity.score`` or an override; l1: sum of |w|, l2: the L2
norm) and ``E_p`` the number of elements of one head in part ``p``: the mean magnitude (l1) or
RMS (l2) of the head in each part, so a fused ``(3E, E)`` projection weighs as much as the
``(E, E)`` output projection (the normalisation ``couple`` uses for filters). The module's
sparsity is its parts' sparsities averaged with their numbers of weights; it keeps
``keep_count(H, s)`` heads, the highest scores, ties to the lower index, and every part gets that
head mask. A pruned head has score 0 in every part, so gradual methods keep it pruned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..structures import get_score, group_scores, keep_count, select_top, shape_4d
from .couple import set_sparsity
from .masking import Layer


def blocks(layers: Sequence[Layer]) -> dict[str, list[Layer]]:
    """The pruned layers that follow a head mask, by attention module, in model order."""
    out: dict[str, list[Layer]] = {}
    for layer in layers:
        if layer.structure is not None and layer.block:
            out.setdefault(layer.block, []).append(layer)
    return out


def head_scores(members: Sequence[Layer], weights: Mapping[str, Tensor], score=None) -> Tensor:
    """``(H,)`` float64: the score of every head of one attention module (module doc)."""
    total = None
    for layer in members:
        w = weights[layer.name]
        sc = get_score(score if score is not None else layer.score)
        _, _, e = layer.structure.layout(shape_4d(w.shape))
        v = group_scores(w, layer.structure, sc).reshape(-1).to(torch.float64)
        v = v / float(e) ** sc.size_exponent
        total = v if total is None else total + v.to(total.device)
    return total


def masks(
    layers: Sequence[Layer],
    weights: Mapping[str, Tensor],
    sparsities: Mapping[str, float],
    score=None,
) -> dict[str, Tensor]:
    """Bool masks of the layers that follow a head mask: one head mask per attention module."""
    out: dict[str, Tensor] = {}
    for members in blocks(layers).values():
        s = set_sparsity(members, sparsities)
        scores = head_scores(members, weights, score)
        chosen = select_top(scores.reshape(1, -1), keep_count(scores.numel(), s))
        for m in members:
            w = weights[m.name]
            mask = m.structure.expand(chosen.to(w.device), shape_4d(w.shape))
            out[m.name] = mask.reshape(w.shape)
    return out


def head_masks(layers: Sequence[Layer], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``(H,)`` bool per attention module: the heads kept, read off its first part's mask."""
    out = {}
    for block, members in blocks(layers).items():
        layer = members[0]
        m = masks[layer.name]
        view = layer.structure.group_view(m.reshape(shape_4d(m.shape)))
        out[block] = view.reshape(view.shape[1], -1).any(dim=1)
    return out
