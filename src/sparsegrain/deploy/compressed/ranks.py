"""Subset ranks of the ``quota-rank`` encoding: a number below ``C(G, n)`` naming the ``n``
positions ``c_0 < c_1 < ...`` a domain keeps among its ``G`` groups, in ``ceil(log2 C(G, n))``
bits.

Ranks of at most 63 bits are the colexicographic rank ``sum_i C(c_i, i + 1)`` from a uint64
table of binomials, in every format version. Wider ones (a 1x1 conv of 1024 input channels at
half density needs 1019 bits per filter) are the split rank of ``splits.py`` from format
version 2 on, computed for every domain of every layer at once and written and read as rows of
uint64 words. Format version 1 stored the colex rank there too; it is still read (and written
on request), in ``n`` passes over numpy object arrays of Python integers for all domains of the
layers that share ``(G, n)``. The passes read rows of the table ``T[i, t] = C(i + t, i + 1)``,
the term of a kept group ``c_i = i + t`` (``t`` empty groups below it): Pascal's rule links rows
(``T[i, t] = T[i, t - 1] + T[i - 1, t]``), and along a row
``T[i, t] = T[i, t - 1] * (i + t) // (t - 1)`` (``t >= 2``; ``T[i, 0] = 0``, ``T[i, 1] = 1``).
Only the window of a row between the fewest and the most empty groups any domain has there is
built, so a pass costs ``D`` additions (or about two comparisons and one subtraction per domain
when reading) and a running sum over the window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ...analysis.counting import ceil_log2
from .bits import BitReader, BitWriter
from .splits import from_ints, keep_of, positions_of, split_keep_words, split_rank_words

VERSION = 2  # the format version written by default; the versions differ in the wide ranks only
VERSIONS = (1, 2)

_RANK_TABLE_LIMIT = 1 << 22  # binomial-table entries for uint64 ranks; Python integers above
_TRIES = 4  # unranking: candidates tried one by one before a binary search


# -- uint64 ranks ---------------------------------------------------------------------------------


def _comb_table(g: int, n: int) -> np.ndarray | None:
    """``table[c, j] = C(c, j)`` for ``c < g``, ``j <= n``, saturated at ``2**63 - 1``."""
    if g * (n + 1) > _RANK_TABLE_LIMIT or ceil_log2(math.comb(g, n)) > 63:
        return None
    cap = np.uint64(2**63 - 1)
    table = np.zeros((max(g, 1), n + 1), dtype=np.uint64)
    table[0, 0] = 1
    for c in range(1, g):
        table[c] = table[c - 1]
        table[c, 1:] = np.minimum(table[c - 1, 1:] + table[c - 1, :-1], cap)
    return table


# -- rows of T ------------------------------------------------------------------------------------


def _objects(vals: list[int]) -> np.ndarray:
    out = np.empty(len(vals), dtype=object)
    out[:] = vals
    return out


def _row_up(row: np.ndarray, start: int, i: int, top: int) -> np.ndarray:
    """Row ``i`` held on ``[start, start + len)``, continued along the row up to ``top``."""
    vals, u = list(row), start + len(row)
    while u <= top:
        vals.append(u if u < 2 else vals[-1] * (i + u) // (u - 1))
        u += 1
    return _objects(vals)


def _row_down(row: np.ndarray, start: int, i: int, low: int) -> tuple[np.ndarray, int]:
    """Row ``i`` held from ``start`` on, continued down the row to ``low``; and its new start."""
    if start <= low:
        return row, start
    vals, u, first = [], start, row[0]
    while u > low:  # T[i, u - 1] = T[i, u] * (u - 1) // (i + u)
        first = first * (u - 1) // (i + u)
        vals.append(first)
        u -= 1
    return np.concatenate([_objects(vals[::-1]), row]), low


# -- wide ranks -----------------------------------------------------------------------------------


def _wide_ranks(pos: np.ndarray, g: int, n: int) -> list[int]:
    """Colex ranks of the rows of ``pos (D, n)`` as Python integers, ``n`` passes over the rows.

    Pass ``i`` adds ``T[i, t]`` to every domain, ``t`` in the window ``[lo, hi]`` of row ``i``
    (the fewest and the most empty groups below a domain's ``i``-th kept group), built from row
    ``i - 1`` by a running sum (Pascal) and one product for its first entry
    (``T[i, lo] = T[i - 1, lo] * (i + lo) // (i + 1)``).
    """
    d = pos.shape[0]
    if n == 0:
        return [0] * d
    t = pos - np.arange(n)  # never decreases along a row
    lo, hi = t.min(0).tolist(), t.max(0).tolist()
    row, start = np.arange(lo[0], hi[0] + 1).astype(object), lo[0]  # T[0, t] = t
    acc = row[t[:, 0] - start]
    for i in range(1, n):
        if hi[i] >= start + len(row):
            row = _row_up(row, start, i - 1, hi[i])
        a, width = lo[i] - start, hi[i] - lo[i] + 1
        nxt = np.empty(width, dtype=object)
        nxt[0] = row[a] * (i + lo[i]) // (i + 1)
        nxt[1:] = row[a + 1 : a + width]
        row, start = np.cumsum(nxt), lo[i]
        acc += row[t[:, i] - start]
    return acc.tolist()


def _largest_at_most(row: np.ndarray, start: int, i: int, rem: np.ndarray, top: np.ndarray):
    """Per domain the largest ``t`` with ``T[i, t] <= rem`` (``row`` holds ``T[i, .]`` from
    ``start``), with the row continued down as far as that needed.

    The greedy step before left ``rem < T[i, top + 1]``, so the answer is at most ``top``. ``t``
    counts the empty groups below ``c_i``: from one term to the next it mostly stays or drops
    by a little, so ``top``, ``top - 1``, ... are tried before a binary search.
    """
    row, start = _row_down(row, start, i, max(0, int(top.min()) - _TRIES + 1))
    t, miss = top.copy(), np.arange(top.size)
    for _ in range(_TRIES):
        miss = miss[~np.less_equal(row[t[miss] - start], rem[miss], dtype=bool)]
        if not miss.size:
            return t, row, start
        t[miss] -= 1
    smallest = min(rem[miss])  # T[i, 0] = 0: the row reaches every answer once row[0] <= it
    while start > 0 and row[0] > smallest:
        row, start = _row_down(row, start, i, max(0, start - 64))
    end = int(t[miss].max()) - start + 1
    t[miss] = np.searchsorted(row[:end], rem[miss], side="right") - 1 + start
    return t, row, start


def _wide_positions(ranks: list[int], g: int, n: int) -> np.ndarray:
    """Inverse of ``_wide_ranks`` for ranks below ``C(g, n)``: ``(D, n)`` ascending positions.

    From the last term down, ``c_i = i + t`` for the largest ``t`` with ``T[i, t] <= r``, then
    ``r -= T[i, t]``: the greedy inverse of the colex rank, so every rank below ``C(g, n)`` gives
    the one subset it ranks. ``t`` never grows from one term to the next, so row ``i`` is held
    from the smallest ``t`` reached up to the largest still possible; row ``i - 1`` is its
    differences (Pascal), continued down the row where a domain needs more.
    """
    d, w = len(ranks), g - n + 1
    out = np.zeros((d, n), dtype=np.int64)
    if n == 0 or d == 0:
        return out
    rem = _objects(ranks)
    row, start = _objects([math.comb(g - 1, n)]), w - 1  # T[n - 1, w - 1]
    top = np.full(d, w - 1, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        top, row, start = _largest_at_most(row, start, i, rem, top)
        out[:, i] = top + i
        rem -= row[top - start]
        if i:  # row i - 1 on [start + 1, max top]: differences of row i
            seg = row[: int(top.max()) - start + 1]
            if seg.size == 1 and start:  # one more entry below, so that one difference is left
                seg, start = _row_down(seg, start, i, start - 1)
            row, start = (seg[1:] - seg[:-1], start + 1) if seg.size > 1 else (seg * 0, start)
    return out


# -- fields ---------------------------------------------------------------------------------------


def _is_wide(g: int, n: int) -> bool:
    """True where ranks go through Python integers (no uint64 table)."""
    return g * (n + 1) > _RANK_TABLE_LIMIT or ceil_log2(math.comb(g, n)) > 63


def check_version(version: int) -> None:
    """ValueError naming the allowed versions unless ``version`` is one of ``VERSIONS``."""
    if version not in VERSIONS:
        raise ValueError(f"format version {version!r}; allowed: {', '.join(map(str, VERSIONS))}")


def _narrow_ranks(pos: np.ndarray, g: int, n: int) -> np.ndarray:
    table = _comb_table(g, n)
    return table[pos, np.arange(1, n + 1)].sum(1, dtype=np.uint64)


def _narrow_positions(r: np.ndarray, g: int, n: int) -> np.ndarray:
    table, total = _comb_table(g, n), math.comb(g, n)
    if (r >= np.uint64(total)).any():
        raise ValueError(f"a rank is >= C({g}, {n})")
    out = np.zeros((r.size, n), dtype=np.int64)
    for i in range(n - 1, -1, -1):
        out[:, i] = np.searchsorted(table[:, i + 1], r, side="right") - 1
        r = r - table[out[:, i], i + 1]
    return out


def _below(words: np.ndarray, bound: int) -> bool:
    """Whether every row of words is below ``bound``."""
    top = from_ints([bound], words.shape[1])[0]
    less, equal = np.zeros(len(words), dtype=bool), np.ones(len(words), dtype=bool)
    for j in range(words.shape[1] - 1, -1, -1):
        less |= equal & (words[:, j] < top[j])
        equal &= words[:, j] == top[j]
    return bool(less.all())


def _read_wide(rd: BitReader, d: int, g: int, n: int, version: int) -> list[int] | np.ndarray:
    """Version 1: the ranks as Python integers; 2: as rows of words (splits.py)."""
    total = math.comb(g, n)
    width = ceil_log2(total)
    if version == 1:
        ranks = rd.read_ints(d, width)
        bad = any(r >= total for r in ranks)
    else:
        ranks = rd.read_words(d, width)
        bad = not _below(ranks, total)
    if bad:
        raise ValueError(f"a rank is >= C({g}, {n})")
    return ranks


def write_ranks(
    wr: BitWriter, pos: Tensor | np.ndarray, g: int, n: int, version: int = VERSION
) -> None:
    """The rank of every row of ascending positions ``pos (D, n)`` in ``ceil(log2 C(g, n))``
    bits."""
    write_ranks_many([(wr, pos, g, n)], version)


def read_ranks(rd: BitReader, d: int, g: int, n: int, version: int = VERSION) -> Tensor:
    """Inverse of ``write_ranks``: ``(d, n)`` ascending positions; ValueError on a bad rank."""
    return read_ranks_many([(rd, d, g, n)], version)[0]


# -- many layers at once --------------------------------------------------------------------------


def _as_positions(sel: np.ndarray) -> np.ndarray:
    sel = np.asarray(sel)
    return positions_of(sel) if sel.dtype == bool else sel.astype(np.int64, copy=False)


def write_ranks_many(
    jobs: Sequence[tuple[BitWriter, np.ndarray, int, int]], version: int = VERSION
) -> None:
    """``write_ranks(wr, sel, g, n)`` for every job, in order; ``sel`` is ``(D, n)`` ascending
    positions or a bool ``(D, g)`` mask keeping ``n`` per row. The wide ranks of all jobs are
    computed together: in version 2 every level of every tree at once (splits.py), in
    version 1 per ``(G, n)``."""
    check_version(version)
    wide = [j for j, (_, sel, g, n) in enumerate(jobs) if len(sel) and _is_wide(g, n)]
    ranks: dict[int, list[int] | np.ndarray] = {}
    if version == 1:
        groups: dict[tuple[int, int], list[int]] = {}
        for j in wide:
            groups.setdefault(jobs[j][2:], []).append(j)
        for (g, n), js in groups.items():
            parts = [_as_positions(jobs[j][1]) for j in js]
            flat, k = _wide_ranks(np.concatenate(parts), g, n), 0
            for j, part in zip(js, parts):
                ranks[j], k = flat[k : k + len(part)], k + len(part)
    else:
        keeps = []
        for j in wide:
            sel, g = np.asarray(jobs[j][1]), jobs[j][2]
            keeps.append(sel if sel.dtype == bool else keep_of(sel.astype(np.int64), g))
        ranks = dict(zip(wide, split_rank_words(keeps, {})))
    for j, (wr, sel, g, n) in enumerate(jobs):
        width = ceil_log2(math.comb(g, n))
        if j not in ranks:
            if len(sel):
                wr.write(_narrow_ranks(_as_positions(sel), g, n), width)
        elif version == 1:
            wr.write_ints(ranks[j], width)
        else:
            wr.write_words(ranks[j], width)


def read_ranks_many(
    jobs: Sequence[tuple[BitReader, int, int, int]], version: int = VERSION, keep: bool = False
) -> list[Tensor] | list[np.ndarray]:
    """``read_ranks(rd, d, g, n)`` for every job, in order (the fields are read in that order),
    the wide ranks unranked together (as in ``write_ranks_many``). ``keep``: bool ``(d, g)``
    numpy masks instead of position tensors."""
    check_version(version)
    out: list = [None] * len(jobs)
    wide: list[tuple[int, list[int] | np.ndarray]] = []
    for j, (rd, d, g, n) in enumerate(jobs):
        if not d:
            out[j] = np.zeros((0, n), dtype=np.int64)
        elif _is_wide(g, n):
            wide.append((j, _read_wide(rd, d, g, n, version)))
        else:
            out[j] = _narrow_positions(rd.read(d, ceil_log2(math.comb(g, n))), g, n)
    if version == 1:
        groups: dict[tuple[int, int], list[tuple[int, list[int]]]] = {}
        for j, rs in wide:
            groups.setdefault(jobs[j][2:], []).append((j, rs))  # type: ignore[arg-type]
        for (g, n), items in groups.items():
            pos, k = _wide_positions([r for _, rs in items for r in rs], g, n), 0
            for j, rs in items:
                out[j], k = pos[k : k + len(rs)], k + len(rs)
    else:
        keeps = split_keep_words([(rs, *jobs[j][2:]) for j, rs in wide], {})  # type: ignore[misc]
        for (j, _), kept in zip(wide, keeps):
            out[j] = kept if keep else positions_of(kept)
    for j, (_, _, g, _) in enumerate(jobs):
        if keep and out[j].dtype != bool:
            out[j] = keep_of(out[j], g)
        elif not keep:
            out[j] = torch.from_numpy(np.ascontiguousarray(out[j]))
    return out
