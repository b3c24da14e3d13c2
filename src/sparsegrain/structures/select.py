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


BAND_SAMPLE = 1 << 16  # mixed group sizes, above 4x this many groups: rank a band, not all


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
    total = float(sum(c * e for c, e in zip(counts, elems)))
    budget = (1.0 - s) * total
    selectable = not value.isnan().any()  # NaN scores: only the sort ranks them (first)
    if len(set(elems)) == 1 and selectable:
        # One group size (fine everywhere, say): the k-th group of the ranking is kept iff
        # k*e - e/2 < budget, so the kept groups are the top `kept` values, found by selection
        # (``select_top``) instead of sorting every group of every layer.
        e = elems[0]
        top = select_top(value.reshape(1, -1), _kept_count(len(value), e, budget)).reshape(-1)
        kept = [e * int(torch.count_nonzero(part)) for part in top.split(counts)]
    else:
        kept = None
        if len(value) > 4 * BAND_SAMPLE and selectable:
            kept = _kept_in_band(value, counts, elems, total, budget)
        if kept is None:
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


def _kept_in_band(
    value: Tensor, counts: list[int], elems: list[float], total: float, budget: float
) -> list[float] | None:
    """Elements kept per layer under ``global_sparsities``' ranking (layer ``i``: ``counts[i]``
    groups of ``elems[i]`` elements, ``total`` in all), without sorting every group: a random
    sample locates the budget's boundary, every group above a band around it is kept, every
    group below is not, and only the band is sorted (stable, so ties go to the earlier group as
    in the full sort).
    The ranking is the full sort's exactly; ``None`` when the boundary falls outside the band
    (a sample far off; the caller then sorts everything)."""
    device = value.device
    ends = torch.tensor(counts, device=device).cumsum(0)
    size_of = torch.tensor(elems, dtype=torch.float64, device=device)
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(len(value), (BAND_SAMPLE,), generator=g).to(device)
    sample = value[pick]
    order = torch.sort(sample, descending=True).indices
    weight = size_of[torch.bucketize(pick, ends, right=True)][order]
    at = int(torch.searchsorted(weight.cumsum(0) * (total / float(weight.sum())), budget))
    margin = 4 * int(BAND_SAMPLE**0.5)  # ~4 standard deviations of the sample's position
    ranked = sample[order]
    above = (
        value > ranked[at - margin]
        if at - margin >= 0
        else torch.zeros_like(value, dtype=torch.bool)
    )
    band = ~above
    if at + margin < BAND_SAMPLE:
        band &= value >= ranked[at + margin]
    kept = [e * int(torch.count_nonzero(part)) for part, e in zip(above.split(counts), elems)]
    where = band.nonzero().squeeze(1)  # ascending: the stable sort below keeps index order
    order = torch.sort(value[where], descending=True, stable=True).indices
    owner = torch.bucketize(where[order], ends, right=True)
    size = size_of[owner]
    w_above = float(sum(kept))
    if not w_above <= budget <= w_above + float(size.sum()):
        return None
    # Every group above the band is kept (its running count is at most w_above); the running
    # count minus half the size grows along the ranking, so none below the band is.
    on = (w_above + size.cumsum(0) - size / 2) < budget
    extra = torch.zeros(len(counts), dtype=torch.float64, device=device)
    extra.index_add_(0, owner[on], size[on])
    return [k + x for k, x in zip(kept, extra.tolist())]
