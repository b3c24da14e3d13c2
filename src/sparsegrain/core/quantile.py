"""The exact interpolated quantile of a tensor, found by selection rather than a full sort.

``exact_quantile(x, q)`` returns the number ``torch.quantile(x, q)`` (``interpolation='linear'``)
returns, bit for bit, without sorting ``x`` and without ``torch.quantile``'s limit of 2**24
elements. Feather recomputes one threshold over every pruned weight at every step
(``methods/feather.py``), which is why the speed matters: see ``bench/feather_overhead.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Below this many elements a direct ``torch.kthvalue`` is as fast as anything cleverer.
DIRECT_SELECT = 1 << 16
# torch.quantile refuses more elements than this: beyond it a float32 rank cannot name every
# position, so the rank is computed in float64 there.
TORCH_QUANTILE_LIMIT = 1 << 24


def exact_quantile(x: Tensor, q: float) -> Tensor:
    """The ``q`` quantile of all elements of ``x``, with linear interpolation (0-dim tensor).

    Interpolation rule (``torch.quantile``, ``interpolation='linear'``; NumPy's default method,
    type 7 of Hyndman & Fan 1996): with ``v`` the elements sorted ascending and ``n`` their
    number, the rank is ``r = q * (n - 1)``, ``lo = floor(r)``, ``hi = ceil(r)`` and the result is
    ``torch.lerp(v[lo], v[hi], r - lo)``. As in ``torch.quantile``, ``q`` and ``r`` are computed
    in ``x``'s dtype (so the result is bitwise equal to ``torch.quantile(x, q)``), and a NaN
    anywhere gives NaN. Above 2**24 elements, where ``torch.quantile`` refuses, ``r`` is computed
    in float64 so that it names the exact position.

    Only the two order statistics ``v[lo]`` and ``v[hi]`` are needed, and they are found by
    selection (``select_order_statistics``): no full sort. ``x`` is not modified; float16 and
    bfloat16 inputs are computed in float32.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"exact_quantile: q must be in [0, 1], got {q}")
    if not x.is_floating_point():
        raise ValueError(f"exact_quantile: x must be a floating-point tensor, got {x.dtype}")
    x = x.detach().reshape(-1)
    n = x.numel()
    if n == 0:
        raise ValueError("exact_quantile: x is empty")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if bool(torch.isnan(x.amax())):  # amax propagates NaN: one reduction, no temporary
        return torch.full((), math.nan, dtype=x.dtype, device=x.device)
    lo, hi, weight = quantile_rank(n, q, x.dtype, x.device)
    v_lo, v_hi = select_order_statistics(x, lo, hi)
    return torch.lerp(v_lo, v_hi, weight)


def quantile_rank(n: int, q: float, dtype: torch.dtype, device=None) -> tuple[int, int, Tensor]:
    """``(lo, hi, weight)`` of the linear-interpolation rank ``q * (n - 1)``, as torch computes it.

    For ``n <= 2**24`` the product is taken in ``dtype`` (``torch.quantile`` turns a float ``q``
    into a tensor of the input's dtype, then ``ranks = q * (n - 1)``, ``weights = ranks -
    floor(ranks)``); above, in float64.
    """
    if n <= TORCH_QUANTILE_LIMIT:
        rank = torch.tensor(q, dtype=dtype, device=device) * (n - 1)
        lo = int(rank)  # truncation: rank >= 0
        hi = int(torch.ceil(rank))
        return lo, hi, rank - lo
    rank = q * (n - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return lo, hi, torch.tensor(rank - lo, dtype=dtype, device=device)


def select_order_statistics(x: Tensor, lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """``(v[lo], v[hi])`` of ``v = sorted(x)`` (1-D, no NaN, 0-based ranks ``lo <= hi``), exactly.

    Small inputs: ``torch.kthvalue``. Large ones: a sample-then-band selection (Floyd & Rivest
    1975). A strided sample of about ``32 * sqrt(n)`` elements is sorted; two of its order
    statistics ``a <= b`` bracket the wanted ranks with a margin of about six standard deviations
    of the sample rank. The band ``{a <= x <= b}`` is gathered in two steps, the first over the
    smaller side (for ``lo >= n/2``: ``rest = {x >= a}``, then ``band = {rest <= b}`` and
    ``below = n - len(rest)``; mirrored below the median), and ``below = #{x < a}`` falls out of
    the sizes. If ``below <= lo`` and ``hi < below + len(band)``, then ``v[i] = sorted(band)[i -
    below]`` for both ranks (every element below ``a`` sorts before the band, every element above
    ``b`` after it, ties included), and ``torch.kthvalue`` finds them in the small band.
    Otherwise (an unlucky sample) it falls back to ``torch.kthvalue`` on all of ``x``. The result
    is exact either way; only the time depends on the sample.
    """
    n = x.numel()
    if n <= DIRECT_SELECT:
        return _kth_pair(x, lo, hi)
    m = min(n, int(32 * math.sqrt(n)))
    sample = torch.sort(x[:: n // m]).values
    m = sample.numel()
    margin = int(3 * math.sqrt(m)) + 2
    j_lo = lo * m // n - margin
    j_hi = hi * m // n + margin
    a = sample[j_lo] if j_lo > 0 else None
    b = sample[j_hi] if j_hi < m - 1 else None
    if a is None and b is None:
        return _kth_pair(x, lo, hi)
    if b is None or (a is not None and 2 * lo >= n):
        rest = x[x >= a]
        below = n - rest.numel()
        band = rest if b is None else rest[rest <= b]
    else:
        rest = x[x <= b]
        band = rest if a is None else rest[rest >= a]
        below = rest.numel() - band.numel()
    if below <= lo and hi < below + band.numel():
        return _kth_pair(band, lo - below, hi - below)
    return _kth_pair(x, lo, hi)


def _kth_pair(x: Tensor, lo: int, hi: int) -> tuple[Tensor, Tensor]:
    v_lo = torch.kthvalue(x, lo + 1).values
    v_hi = v_lo if hi == lo else torch.kthvalue(x, hi + 1).values
    return v_lo, v_hi
