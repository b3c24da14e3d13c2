"""Group scores of a weight; global selection (one threshold across layers -> layer sparsities)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .core import (
    Score,
    Structure,
    as_4d,
    check_sparsity,
    get_score,
    score_groups,
    select_top,
    shape_4d,
)
from .names import parse_structure


def group_scores(w: Tensor, structure: str | Structure, score: str | Score = "l1") -> Tensor:
    """``(D, G)`` scores of the groups of ``w`` under ``structure`` (``Structure.group_view``)."""
    st = parse_structure(structure)
    reason = st.fits(w.shape)
    if reason is not None:
        raise ValueError(f"structure does not fit weight shape {tuple(w.shape)}: {reason}")
    return score_groups(st.group_view(as_4d(w.detach())), score)


def _kept_count(n: int, e: float, budget: float) -> int:
    """How many of ``n`` groups of ``e`` elements the ranking keeps: the largest ``k <= n`` with
    ``k * e - e / 2 < budget`` (the sort path's test, in the same float64 arithmetic)."""
    k = min(n, max(0, int(budget / e + 0.5)))
    while k < n and (k + 1) * e - e / 2 < budget:
        k += 1
    while k > 0 and k * e - e / 2 >= budget:
        k -= 1
    return k


def global_sparsities(
    layers: Mapping[str, tuple[Tensor, str | Structure]],
    sparsity: float,
    score: str | Score = "l1",
) -> dict[str, float]:
    """Per-layer sparsities from one threshold over size-normalised group scores of all layers.

    Every group of every layer gets ``score / E ** size_exponent`` (E = elements per group): mean
    magnitude for l1, RMS for l2, so groups of different sizes compare fairly. Groups are ranked by
    that value (descending, stable: earlier layer, then earlier group, wins a tie) and kept in
    that order while the kept elements fit the budget ``(1 - sparsity) * total``: a group is kept
    iff the running count of elements up to its middle is below the budget, so the total is
    within half of the largest group of the target. A layer's sparsity is the fraction of its
    elements not kept, capped at ``max_sparsity`` (a mask keeps at least one group per domain,
    and nm layers never go past ``1 - n/m``).

    The caller then takes each layer's ``structure.mask(w, s_layer)``. For layer-domain
    structures (fine, vector, kernel, filter, channel, shape, block) that mask keeps exactly the
    groups above the one global threshold (up to ties, and to the one-group floor). Balanced
    structures (window, kernel-quota, nm, combined) get a sparsity from the threshold, then their
    own per-domain quota; their totals move by up to one quota step of the layer.
    """
    s = check_sparsity(sparsity)
    if not layers:
        return {}
    device = next(iter(layers.values()))[0].device
    sc = get_score(score)
    values, elems, structs = [], [], []
    for name, (w, structure) in layers.items():
        st = parse_structure(structure)
        reason = st.fits(w.shape)
        if reason is not None:
            raise ValueError(f"layer '{name}' {tuple(w.shape)}: {reason}")
        _, _, e = st.layout(shape_4d(w.shape))
        v = score_groups(st.group_view(as_4d(w.detach())), sc).reshape(-1)
        values.append(v.to(device, torch.float64) / float(e) ** sc.size_exponent)
        elems.append(float(e))
        structs.append(st)
    counts = [len(v) for v in values]
    value = torch.cat(values)
    budget = (1.0 - s) * float(sum(c * e for c, e in zip(counts, elems)))
    if len(set(elems)) == 1 and not value.isnan().any():
        # One group size (fine everywhere, say): the k-th group of the ranking is kept iff
        # k*e - e/2 < budget, so the kept groups are the top `kept` values, found by selection
        # (``select_top``) instead of sorting every group of every layer.
        e = elems[0]
        top = select_top(value.reshape(1, -1), _kept_count(len(value), e, budget)).reshape(-1)
        kept = [e * int(torch.count_nonzero(part)) for part in top.split(counts)]
    else:
        f64 = {"dtype": torch.float64, "device": device}
        size = torch.cat([torch.full((c,), e, **f64) for c, e in zip(counts, elems)])
        owner = torch.cat([torch.full((c,), i, device=device) for i, c in enumerate(counts)])
        order = torch.sort(value, descending=True, stable=True).indices
        size, owner = size[order], owner[order]
        on = (torch.cumsum(size, 0) - size / 2) < budget
        sums = torch.zeros(len(layers), dtype=torch.float64, device=device)
        kept = sums.index_add_(0, owner[on], size[on]).tolist()
    out = {}
    for (name, (w, _)), st, k in zip(layers.items(), structs, kept):
        n = w.numel()
        out[name] = min((n - k) / n, st.max_sparsity(w.shape))
    return out
