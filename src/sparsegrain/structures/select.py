"""Group scores of a weight; global selection (one threshold across layers -> layer sparsities)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .core import Score, Structure, as_4d, check_sparsity, get_score, score_groups, shape_4d
from .names import parse_structure


def group_scores(w: Tensor, structure: str | Structure, score: str | Score = "l1") -> Tensor:
    """``(D, G)`` scores of the groups of ``w`` under ``structure`` (``Structure.group_view``)."""
    st = parse_structure(structure)
    reason = st.fits(w.shape)
    if reason is not None:
        raise ValueError(f"structure does not fit weight shape {tuple(w.shape)}: {reason}")
    return score_groups(st.group_view(as_4d(w.detach())), score)


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
    values, sizes, owners, structs = [], [], [], []
    for i, (name, (w, structure)) in enumerate(layers.items()):
        st = parse_structure(structure)
        reason = st.fits(w.shape)
        if reason is not None:
            raise ValueError(f"layer '{name}' {tuple(w.shape)}: {reason}")
        _, _, e = st.layout(shape_4d(w.shape))
        v = score_groups(st.group_view(as_4d(w.detach())), sc).reshape(-1)
        values.append(v.to(device, torch.float64) / float(e) ** sc.size_exponent)
        sizes.append(torch.full(v.shape, float(e), dtype=torch.float64, device=device))
        owners.append(torch.full(v.shape, i, dtype=torch.long, device=device))
        structs.append(st)
    value, size, owner = torch.cat(values), torch.cat(sizes), torch.cat(owners)
    order = torch.sort(value, descending=True, stable=True).indices
    size, owner = size[order], owner[order]
    budget = (1.0 - s) * float(size.sum())
    kept = (torch.cumsum(size, 0) - size / 2) < budget
    kept_elems = torch.zeros(len(layers), dtype=torch.float64, device=device)
    kept_elems.index_add_(0, owner[kept], size[kept])
    out = {}
    for (name, (w, _)), st, k in zip(layers.items(), structs, kept_elems.tolist()):
        n = w.numel()
        out[name] = min((n - k) / n, st.max_sparsity(w.shape))
    return out
