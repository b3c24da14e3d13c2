"""Split ranks: the wide subset ranks of ``quota-rank`` from format version 2 on.

A domain keeps ``n`` of its ``G`` groups; its rank is a number below ``C(G, n)`` that names
the subset, stored in ``ceil(log2 C(G, n))`` bits, the size storage.py counts. Version 1 used
the colexicographic rank (``ranks.py``), whose terms are ``G``-bit binomials, one big-integer
addition per kept group. The split rank names the same subsets with the same count of values,
by halves:

- The groups are cut into leaves of 16 (the last may be shorter). A leaf's rank is the colex
  rank of its kept groups among the ``C(16, k)`` patterns with as many, which is the order of
  their 16-bit masks: one table of 65536 entries.
- Two neighbours ``L`` (``h_L`` groups, ``k_L`` kept, rank ``r_L``) and ``R`` join into one node
  of ``h = h_L + h_R`` groups and ``m = k_L + k_R`` kept, ranked
  ``off(m, k_L) + r_L * C(h_R, k_R) + r_R`` with ``off(m, k) = sum_{j < k} C(h_L, j) C(h_R, m - j)``
  (Vandermonde's identity: the blocks of every ``k_L`` tile ``[0, C(h, m))`` in order, so this
  is a bijection onto it, as the leaves are). Nodes pair up level by level, left to right (an
  odd one out moves up as it is); the root's rank is the domain's.

Nodes of at most 64 groups rank below ``C(64, 32) < 2**63``: those levels run in uint64 numpy
arrays. Above, Python integers in numpy object arrays, one multiplication and two additions per
pair when writing, a search among the ``off`` row of the node's ``m`` and a division when
reading: about ``G / 64`` big-integer steps per domain where the colex rank took ``n``. Every
rank below ``C(G, n)`` reads back to one subset, so a corrupt rank cannot yield a bad mask.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

LEAF = 16
_SMALL = 64  # nodes of at most this many groups rank in uint64


@cache
def _leaf_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per 16-bit mask its popcount and rank among masks of that popcount (ascending, which is
    colex order); the masks by (popcount, rank); where each popcount's masks start."""
    masks = np.arange(1 << LEAF, dtype=np.int64)
    count = np.zeros(1 << LEAF, dtype=np.int64)
    for b in range(LEAF):
        count += (masks >> b) & 1
    order = np.lexsort((masks, count))
    start = np.concatenate([[0], np.cumsum(np.bincount(count, minlength=LEAF + 1))])
    rank = np.empty(1 << LEAF, dtype=np.uint64)
    rank[order] = (np.arange(1 << LEAF) - start[count[order]]).astype(np.uint64)
    return count, rank, order.astype(np.uint16), start


@cache
def _comb_row(h: int) -> np.ndarray:
    """``C(h, k)`` for ``k = 0..h`` as Python integers (object array)."""
    vals = [1]
    for k in range(h):
        vals.append(vals[-1] * (h - k) // (k + 1))
    out = np.empty(h + 1, dtype=object)
    out[:] = vals
    return out


@cache
def _small_tables(hl: int, hr: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 ``off[m, k]`` for every ``m <= hl + hr`` and ``k <= hl + 1`` (``off(m, k)`` for a
    possible ``k``, ``C(hl + hr, m)`` above it, so each row ascends and is searchable), and
    ``C(hr, k)``."""
    cl, cr = _comb_row(hl).tolist(), _comb_row(hr).tolist()
    off = np.zeros((hl + hr + 1, hl + 2), dtype=np.uint64)
    for m in range(hl + hr + 1):
        acc, top = 0, min(hl, m)
        for k in range(hl + 2):
            off[m, k] = acc if k <= top else math.comb(hl + hr, m)
            if k <= top and m - k <= hr:
                acc += cl[k] * cr[m - k]
    return off, np.array(cr, dtype=np.uint64)


Rows = dict[tuple[int, int, int], np.ndarray]  # (h_L, h_R, m) -> off row, shared by calls


def _off_row(hl: int, hr: int, m: int, rows: Rows) -> np.ndarray:
    """``off(m, k)`` for ``k = 0..min(hl, m) + 1`` (the last is ``C(hl + hr, m)``), Python
    integers; kept in ``rows``, which the layers of one file share (every ``G`` from 128 up
    has nodes of 128, and so on)."""
    row = rows.get((hl, hr, m))
    if row is None:
        lo, top = max(0, m - hr), min(hl, m)
        row = np.zeros(top + 2, dtype=object)
        ks = np.arange(lo, top + 1)
        row[lo + 1 :] = np.cumsum(_comb_row(hl)[ks] * _comb_row(hr)[m - ks])
        rows[(hl, hr, m)] = row
    return row


def _search_small(off: np.ndarray, m: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per node the largest ``k`` with ``off[m, k] <= r`` (``off[m, 0] = 0 <= r``, and the
    last column exceeds every rank of its row), in power-of-two steps over the flat table."""
    width = off.shape[1]
    flat, k = off.reshape(-1), m * width
    at = k.copy()
    step = 1 << (width - 1).bit_length()
    while step := step >> 1:
        nxt = np.minimum(at + step, k + width - 1)
        at += (flat[nxt] <= r) * (nxt - at)
    return at - k


def _sizes(g: int) -> list[list[int]]:
    """Node sizes level by level, leaves first."""
    sizes = [LEAF] * (g // LEAF) + [g % LEAF] * (g % LEAF > 0)
    levels = [sizes]
    while len(sizes) > 1:
        pairs = [sizes[i] + sizes[i + 1] for i in range(0, len(sizes) - 1, 2)]
        sizes = pairs + sizes[len(sizes) - len(sizes) % 2 :]
        levels.append(sizes)
    return levels


def _pair_kinds(sizes: list[int]) -> list[tuple[int, int, np.ndarray]]:
    """``(h_L, h_R, pair columns)`` for each kind of pair on a level (only the last differs)."""
    right = [sizes[2 * j + 1] for j in range(len(sizes) // 2)]
    return [(sizes[0], hr, np.flatnonzero(np.array(right) == hr)) for hr in sorted(set(right))]


def split_ranks(pos: np.ndarray, g: int, rows: Rows | None = None) -> list[int]:
    """The split rank of every row of ascending positions ``pos (D, n)`` among ``g`` groups."""
    rows = {} if rows is None else rows
    d = pos.shape[0]
    if d == 0:
        return []
    width = -(-g // LEAF) * LEAF
    keep = np.zeros((d, width), dtype=bool)
    keep.reshape(-1)[(pos + width * np.arange(d)[:, None]).reshape(-1)] = True
    masks = np.packbits(keep, axis=1, bitorder="little").view("<u2")
    count, rank, _, _ = _leaf_tables()
    r, k = rank[masks], count[masks]
    levels = _sizes(g)
    for sizes in levels[:-1]:
        npair = len(sizes) // 2
        up_r = np.empty((d, npair), dtype=object if sizes[0] * 2 > _SMALL else np.uint64)
        up_k = k[:, 0 : 2 * npair : 2] + k[:, 1 : 2 * npair : 2]
        for hl, hr, cols in _pair_kinds(sizes):
            rl, rr, kl, kr = r[:, 2 * cols], r[:, 2 * cols + 1], k[:, 2 * cols], k[:, 2 * cols + 1]
            m = up_k[:, cols]
            if hl + hr <= _SMALL:
                off, comb = _small_tables(hl, hr)
                up_r[:, cols] = off[m, kl] + rl * comb[kr] + rr
                continue
            ms, inv = np.unique(m, return_inverse=True)  # one row of off per distinct m
            held = [_off_row(hl, hr, mv, rows) for mv in ms.tolist()]
            base = np.cumsum([0] + [len(row) for row in held[:-1]])
            offs = np.concatenate(held)[base[inv.reshape(m.shape)] + kl]
            up_r[:, cols] = offs + rl.astype(object) * _comb_row(hr)[kr] + rr.astype(object)
        if len(sizes) % 2:
            up_r = np.concatenate([up_r, r[:, -1:].astype(up_r.dtype)], axis=1)
            up_k = np.concatenate([up_k, k[:, -1:]], axis=1)
        r, k = up_r, up_k
    return [int(x) for x in r[:, 0]]


def split_positions(ranks: list[int], g: int, n: int, rows: Rows | None = None) -> np.ndarray:
    """Inverse of ``split_ranks`` for ranks below ``C(g, n)``: ``(D, n)`` ascending positions."""
    rows = {} if rows is None else rows
    d = len(ranks)
    if d == 0 or n == 0:
        return np.zeros((d, n), dtype=np.int64)
    r = np.empty((d, 1), dtype=object)
    r[:, 0] = ranks
    k = np.full((d, 1), n, dtype=np.int64)
    levels = _sizes(g)
    for sizes in reversed(levels[:-1]):
        if sizes[0] * 2 <= _SMALL and r.dtype == object:
            r = r.astype(np.uint64)
        down_r = np.empty((d, len(sizes)), dtype=r.dtype)
        down_k = np.empty((d, len(sizes)), dtype=np.int64)
        for hl, hr, cols in _pair_kinds(sizes):
            rv, m = r[:, cols], k[:, cols]
            if hl + hr <= _SMALL:
                off, comb = _small_tables(hl, hr)
                kl = _search_small(off, m, rv)
                rem, div = rv - off[m, kl], comb[m - kl]
            else:
                flat_m, flat_r = m.reshape(-1), rv.reshape(-1)
                order = np.argsort(flat_m, kind="stable")
                ms, first = np.unique(flat_m[order], return_index=True)
                kl, rem = np.empty(flat_m.size, dtype=np.int64), np.empty(flat_m.size, dtype=object)
                for mv, a, b in zip(ms.tolist(), first.tolist(), [*first[1:].tolist(), None]):
                    at = order[a:b]  # the nodes holding mv kept groups
                    row = _off_row(hl, hr, mv, rows)
                    kl[at] = np.searchsorted(row, flat_r[at], side="right") - 1
                    rem[at] = flat_r[at] - row[kl[at]]
                kl, rem = kl.reshape(m.shape), rem.reshape(m.shape)
                div = _comb_row(hr)[m - kl]
            q = rem // div
            down_r[:, 2 * cols], down_r[:, 2 * cols + 1] = q, rem - q * div
            down_k[:, 2 * cols], down_k[:, 2 * cols + 1] = kl, m - kl
        if len(sizes) % 2:
            down_r[:, -1], down_k[:, -1] = r[:, -1], k[:, -1]
        r, k = down_r, down_k
    _, _, masks, start = _leaf_tables()
    leaves = masks[start[k] + r.astype(np.int64)]
    keep = np.unpackbits(leaves.astype("<u2").view(np.uint8), axis=1, bitorder="little")
    flat = np.flatnonzero(np.ascontiguousarray(keep[:, :g]).view(bool))
    return flat.reshape(d, n) - g * np.arange(d)[:, None]
