"""Counting on a layer's occupancy (which weights are non-zero) for the storage analysis and the
compressed format: log2 of binomials, csr fillers, kept groups and quota counts per domain,
computed with numpy on bool arrays (``storage`` has the encodings and their formulas)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..structures import Structure, as_4d

_EXACT_LIMIT = 4096  # log2 C(n, k) from exact integers up to this n, from lgamma above
_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)  # compared with 0 in numpy


def ceil_log2(x: int) -> int:
    """``ceil(log2 x)`` for an integer ``x >= 1``, exactly (0 for x = 1)."""
    if x < 1:
        raise ValueError(f"ceil_log2 needs an integer >= 1, got {x}")
    return (x - 1).bit_length()


def log2_comb(n: int, k: int) -> float:
    """``log2 C(n, k)``: from the exact integer for ``n <= 4096``, from ``math.lgamma`` above."""
    if not 0 <= k <= n:
        raise ValueError(f"log2_comb needs 0 <= k <= n, got n={n}, k={k}")
    k = min(k, n - k)
    if k == 0:
        return 0.0
    if n <= _EXACT_LIMIT:
        return math.log2(math.comb(n, k))
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def relative_fillers(positions: Tensor | np.ndarray, index_bits: int) -> int:
    """Filler entries the csr rule needs for sorted ``positions`` with ``index_bits`` per gap.

    ``gap_1 = p_1`` (counted from position 0), ``gap_i = p_i - p_{i-1}``; a gap ``g`` needs
    ``max(0, (g - 1) // (2**index_bits - 1))`` fillers.
    """
    if isinstance(positions, Tensor):
        positions = positions.detach().cpu().numpy()
    p = np.asarray(positions, dtype=np.int64).reshape(-1)
    if p.size == 0:
        return 0
    gaps = np.diff(p, prepend=0)
    return int((np.maximum(gaps - 1, 0) // ((1 << index_bits) - 1)).sum())


def _all_ones(z: np.ndarray, width: int) -> np.ndarray:
    """``out[i] = z[i] & z[i + 1] & ... & z[i + width - 1]`` for bool ``z`` (``width >= 1``),
    by doubling: ``log2 width`` passes over bytes instead of a pass over int64 positions."""
    w, k = z, 1
    while 2 * k <= width and w.size:
        w, k = w[:-k] & w[k:], 2 * k
    if k < width and w.size:
        w = w[: max(w.size - (width - k), 0)] & w[width - k :]
    return w


def mask_fillers(occupied: np.ndarray, index_bits: int) -> int:
    """``relative_fillers`` of the positions of the True entries of the bool vector
    ``occupied``, from its runs of empty positions (no position list is built).

    Only a run of at least ``L = 2**index_bits - 1`` empty positions needs a filler: a run of
    ``z`` between two entries is a gap ``z + 1`` (``z // L`` fillers), the run before the first
    entry is a gap ``z`` (``(z - 1) // L``), and the run after the last entry costs nothing.
    """
    occ = np.asarray(occupied, dtype=bool).reshape(-1)
    cap = (1 << index_bits) - 1
    if cap >= occ.size or not occ.any():
        return 0
    starts = np.flatnonzero(_all_ones(~occ, cap))  # windows of cap empty positions
    if starts.size == 0:
        return 0
    # Consecutive window starts belong to one run; a run of z empties holds z - cap + 1 starts.
    cut = np.flatnonzero(np.diff(starts) != 1) + 1
    first = starts[np.concatenate(([0], cut))]
    z = np.diff(np.concatenate(([0], cut, [starts.size]))) + cap - 1
    fill = z // cap
    fill[first == 0] = (z[first == 0] - 1) // cap  # the run before the first entry
    fill[first + z == occ.size] = 0  # the run after the last entry
    return int(fill.sum())


# -- occupancy at each level ----------------------------------------------------------------------


def group_view_of(occ4: np.ndarray, st: Structure) -> np.ndarray:
    """``st.group_view`` of a bool numpy ``(K, C, R, S)`` array: ``(D, G, E)``, a view."""
    return st.group_view(torch.from_numpy(occ4)).numpy()


def any_last(view: np.ndarray) -> np.ndarray:
    """``view.any(-1)``; for short groups an OR of the ``E`` slices, several times faster than
    numpy's reduction over a short last axis."""
    e = view.shape[-1]
    if e == 0:
        return np.zeros(view.shape[:-1], dtype=bool)
    if e > 32:
        return view.any(-1)
    out = view[..., 0].copy()
    for i in range(1, e):
        out |= view[..., i]
    return out


def kept_groups(occ4: np.ndarray, st: Structure) -> tuple[np.ndarray, int]:
    """Bool ``(D*G,)`` kept groups in ``group_view`` order, and ``E``."""
    view = group_view_of(occ4, st)
    return any_last(view).reshape(-1), view.shape[-1]


def level_counts(occ4: np.ndarray, st: Structure) -> list[tuple[int, int, int]]:
    """Balanced description: ``[(D, G, n), ...]`` per level of ``st.quota_levels``.

    ``n`` is the largest count over the level's domains; below the first level the domains
    stored are the groups the level above stored (``D * n`` of them), the others being empty.
    """
    levels: list[tuple[int, int, int]] = []
    for level in st.quota_levels:
        kept = any_last(group_view_of(occ4, level))
        d = kept.shape[0] if not levels else levels[-1][0] * levels[-1][2]
        levels.append((d, kept.shape[1], int(np.count_nonzero(kept, axis=1).max())))
    return levels


def last_values(occ4: np.ndarray, st: Structure, levels: list[tuple[int, int, int]]) -> int:
    """Values stored by the balanced description: ``D*n*E`` of the last level."""
    d, _, n = levels[-1]
    return d * n * st.quota_levels[-1].layout(tuple(occ4.shape))[2]


# -- encodings ------------------------------------------------------------------------------------


def occupancy(t: Tensor, st: Structure) -> np.ndarray:
    """Bool numpy ``(K, C, R, S)``: True where ``t`` is non-zero."""
    reason = st.fits(t.shape)
    if reason is not None:
        raise ValueError(f"structure does not fit weight shape {tuple(t.shape)}: {reason}")
    t = as_4d(t.detach().cpu())
    if t.dtype in _NUMPY_FLOATS:
        return t.contiguous().numpy() != 0
    return (t != 0).numpy()
