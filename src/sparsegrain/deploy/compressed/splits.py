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
arrays. Pairs of at most 128 groups with a left node of at most 64 have one-word children and
two-word ranks: numpy with 32-bit halves, and when reading a float64 estimate of the quotient,
refined by the float quotient of the exact remainder and corrected exactly. Above, a rank is a
row of little-endian uint64 words (``words_for(h)`` of them), and the nodes of every layer
(every ``G``) on one level are joined or split together, sorted by ``k_R`` so that each class
shares its factor ``c = C(h_R, k_R)``. A class's ranks are packed into one Python integer, a
field per node wide enough that no field overflows into the next (Kronecker substitution), so
one big-integer product serves them all:

- writing, ``r_L * c`` per class, then ``r_R`` and ``off`` added to the whole level;
- reading, ``k_L`` is the last entry of the ``off`` row of ``m`` at or below the rank, found on
  63-bit prefixes (exactly, with Python integers, only where a prefix ties with an entry);
  then ``q = floor(rem / c)`` by a reciprocal, a division by an invariant integer done as a
  multiplication (Granlund and Montgomery, PLDI 1994): with ``mu = floor(2**N / c)`` (every
  ``rem < 2**N``), ``rem * mu / 2**N > rem / c - 1``, so ``(rem * mu) >> N`` is ``q`` or one
  less, and one packed comparison corrects it: the field ``rem - q c + 2**g - c`` reaches bit
  ``g`` exactly where ``rem - q c >= c``.

The ``off`` rows are held as windows around the middle (``_Row``), since the ``k_L`` of real
nodes lie a few standard deviations of the hypergeometric law around it. So a level costs a few
big-integer operations per class, not per node. Every rank below ``C(G, n)`` reads back to one
subset, so a corrupt rank cannot yield a bad mask.
"""

from __future__ import annotations

import math
from bisect import bisect_right
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
def _comb_row(h: int) -> tuple[int, ...]:
    """``C(h, k)`` for ``k = 0..h``."""
    vals = [1]
    for k in range(h):
        vals.append(vals[-1] * (h - k) // (k + 1))
    return tuple(vals)


@cache
def _comb_u64(h: int) -> np.ndarray:
    """``C(h, k)`` for ``k = 0..h`` as uint64 (``h <= 64``)."""
    return np.array(_comb_row(h), dtype=np.uint64)


@cache
def _small_keys(hl: int, hr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One ascending uint64 table of every row of ``off`` of a pair of at most 64 groups.

    With ``S(m) = sum_{j < m} C(h, j)``, a node of ``m`` kept groups and rank ``r < C(h, m)``
    has the key ``S(m) + r < 2**h <= 2**64``. The table holds ``S(m) + off(m, k)`` for
    ``k = lo..top`` of every ``m``, ascending within a row and below ``S(m + 1)``, so one
    ``searchsorted`` of the keys finds every node's ``k_L``. Hands back ``S``, where each row
    would start for ``k = 0`` (``off(m, k)`` is entry ``first[m] + k`` less ``S(m)``), the
    table and the ``k`` of each entry."""
    cl, cr = _comb_row(hl), _comb_row(hr)
    starts, first, keys, ks, s = [], [], [], [], 0
    for m in range(hl + hr + 1):
        lo = max(0, m - hr)
        starts.append(s)
        first.append(len(keys) - lo)
        acc = 0
        for k in range(lo, min(hl, m) + 1):
            keys.append(s + acc)
            ks.append(k)
            acc += cl[k] * cr[m - k]
        s += acc
    u64 = np.uint64
    return (
        np.array(starts, dtype=u64),
        np.array(first, dtype=np.int64),
        np.array(keys, dtype=u64),
        np.array(ks, dtype=np.int64),
    )


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


# -- words: wide ranks as rows of little-endian uint64 words --------------------------------------


def words_for(bits: int) -> int:
    """uint64 words that hold a number of ``bits`` bits (one at least)."""
    return max(1, -(-bits // 64))


def _widen(a: np.ndarray, width: int) -> np.ndarray:
    """Rows of ``a`` (``(N, L)`` words, ``L <= width``) zero-extended to ``width`` words."""
    if a.shape[1] == width:
        return np.ascontiguousarray(a)
    out = np.zeros((a.shape[0], width), dtype=np.uint64)
    out[:, : a.shape[1]] = a
    return out


def _pack(a: np.ndarray, width: int) -> int:
    """The rows of ``a`` as one integer, row ``i`` in the ``width``-word field ``i`` (Kronecker
    packing: one big-integer operation then acts on every field, as long as none overflows)."""
    return int.from_bytes(_widen(a, width).tobytes(), "little")


def _unpack(x: int, n: int, width: int) -> np.ndarray:
    """Inverse of ``_pack``: ``n`` fields of ``width`` words."""
    return np.frombuffer(x.to_bytes(8 * n * width, "little"), dtype=np.uint64).reshape(n, width)


def to_ints(a: np.ndarray) -> list[int]:
    """Rows of words as Python integers."""
    raw, step = np.ascontiguousarray(a).tobytes(), 8 * a.shape[1]
    return [int.from_bytes(raw[i : i + step], "little") for i in range(0, len(raw), step)]


def from_ints(vals: list[int], width: int) -> np.ndarray:
    """Python integers below ``2**(64 * width)`` as rows of ``width`` words."""
    raw = b"".join(v.to_bytes(8 * width, "little") for v in vals)
    return np.frombuffer(raw, dtype=np.uint64).reshape(len(vals), width).copy()


# -- rows of off ----------------------------------------------------------------------------------


class _Row:
    """A window ``[k0, k1]`` of ``off(m, k)`` (``k`` from ``lo = max(0, m - h_R)`` to
    ``top + 1`` with ``top = min(h_L, m)``; ``off(m, lo) = 0``, ``off(m, top + 1) = C(h, m)``),
    as integers, as words and as prefixes shifted right by ``shift`` bits (below ``2**63``).

    The window grows from an anchor by one term ``C(h_L, j) C(h_R, m - j)`` per entry. For
    ``h_L = h_R`` the terms are symmetric in ``j <-> m - j``, so the anchor is the middle:
    ``off(m, m / 2) = (C(h, m) - C(h_L, m / 2)**2) / 2`` for even ``m``,
    ``off(m, (m + 1) / 2) = C(h, m) / 2`` for odd; the ``k_L`` of real nodes lie a few standard
    deviations of the hypergeometric law around it, so few entries are ever built. Otherwise
    (the last pair of a level) the anchor is ``off(m, lo) = 0``.
    """

    def __init__(self, hl: int, hr: int, m: int) -> None:
        self.hl, self.hr, self.m = hl, hr, m
        self.lo, self.top = max(0, m - hr), min(hl, m)
        total = math.comb(hl + hr, m)
        self.shift, self.width = max(0, total.bit_length() - 63), words_for(hl + hr)
        if hl == hr:
            self.k0 = (m + 1) // 2
            self.ints = [(total - self._term(m // 2)) // 2 if m % 2 == 0 else total // 2]
        else:
            self.k0, self.ints = self.lo, [0]
        self._words: np.ndarray | None = None
        self._prefix: np.ndarray | None = None

    def _term(self, j: int) -> int:
        return _comb_row(self.hl)[j] * _comb_row(self.hr)[self.m - j]

    @property
    def k1(self) -> int:
        return self.k0 + len(self.ints) - 1

    def cover(self, a: int, b: int) -> None:
        """Grow the window to hold every ``k`` in ``[a, b]`` (within ``[lo, top + 1]``)."""
        a, b = max(a, self.lo), min(b, self.top + 1)
        if a < self.k0:
            below, v = [], self.ints[0]
            for k in range(self.k0 - 1, a - 1, -1):
                v -= self._term(k)
                below.append(v)
            self.ints[:0], self.k0 = below[::-1], a
        if b > self.k1:
            v = self.ints[-1]
            for k in range(self.k1, b):
                v += self._term(k)
                self.ints.append(v)

    @property
    def words(self) -> np.ndarray:
        if self._words is None or len(self._words) != len(self.ints):
            self._words = from_ints(self.ints, self.width)
        return self._words

    @property
    def prefix(self) -> np.ndarray:
        if self._prefix is None or len(self._prefix) != len(self.ints):
            self._prefix = np.array([v >> self.shift for v in self.ints], dtype=np.uint64)
        return self._prefix

    def cover_ranks(self, low: int, high: int) -> None:
        """Grow the window until every rank with a prefix in ``[low, high]`` has its ``k_L``
        inside: ``prefix[0] < low`` (or ``k0 = lo``) and ``prefix[-1] > high`` (or
        ``k1 = top + 1``)."""
        if len(self.ints) == 1:  # first: five standard deviations of k_L's hypergeometric law
            h = self.hl + self.hr
            var = self.m * self.hl * self.hr * (h - self.m) / (h * h * max(h - 1, 1))
            reach = int(5 * var**0.5) + 4
            self.cover(self.k0 - reach, self.k0 + reach)
        step = 8
        while self.k0 > self.lo and int(self.prefix[0]) >= low:
            self.cover(self.k0 - step, self.k1)
            step *= 2
        step = 8
        while self.k1 <= self.top and int(self.prefix[-1]) <= high:
            self.cover(self.k0, self.k1 + step)
            step *= 2


Rows = dict[tuple[int, int, int], _Row]  # (h_L, h_R, m) -> row; the layers of one file share it


def _row(hl: int, hr: int, m: int, rows: Rows) -> _Row:
    row = rows.get((hl, hr, m))
    if row is None:
        row = rows[(hl, hr, m)] = _Row(hl, hr, m)
    return row


def _tables(hl: int, hr: int, held: dict[int, _Row]):
    """The rows of the ``m`` present laid end to end: per ``m`` where its row starts, its
    length and its ``k0``; and the rows' words, concatenated."""
    base, length, k0 = (np.zeros(hl + hr + 1, dtype=np.int64) for _ in range(3))
    at = 0
    for mv, row in held.items():
        base[mv], length[mv], k0[mv] = at, len(row.ints), row.k0
        at += len(row.ints)
    return base, length, k0, np.concatenate([row.words for row in held.values()])


def _offsets(hl: int, hr: int, m: np.ndarray, kl: np.ndarray, rows: Rows) -> np.ndarray:
    """``off(m, k_L)`` of every node as ``words_for(hl + hr)`` words."""
    if not len(m):
        return np.zeros((0, words_for(hl + hr)), dtype=np.uint64)
    order = _order(m)
    held = {}
    for mv, a, b in _runs(m[order]):
        ks = kl[order[a:b]]
        held[mv] = row = _row(hl, hr, mv, rows)
        row.cover(int(ks.min()), int(ks.max()))
    base, _, k0, words = _tables(hl, hr, held)
    return words[base[m] + kl - k0[m]]


def _order(keys: np.ndarray) -> np.ndarray:
    """A stable sorting order of non-negative counts (a radix sort where they fit uint16)."""
    small = keys.size == 0 or int(keys.max()) < 1 << 16
    return np.argsort(keys.astype(np.uint16) if small else keys, kind="stable")


def _runs(ordered: np.ndarray) -> list[tuple[int, int, int]]:
    """``(value, start, end)`` of every run of equal entries of a sorted array."""
    cuts = np.flatnonzero(np.diff(ordered)) + 1
    starts, ends = [0, *cuts.tolist()], [*cuts.tolist(), len(ordered)]
    return [(int(ordered[a]), a, b) for a, b in zip(starts, ends)] if len(ordered) else []


# -- one level of the big nodes -------------------------------------------------------------------


def _join_small(rl, rr, kl, kr, hl: int, hr: int, rows: Rows) -> np.ndarray:
    """``_join`` for pairs of at most 64 groups: one uint64 word, from the tables."""
    starts, first, keys, _ = _small_keys(hl, hr)
    m = kl + kr
    off = keys[first[m] + kl] - starts[m]
    return (off + rl[:, 0] * _comb_u64(hr)[kr] + rr[:, 0])[:, None]


def _split_small(r: np.ndarray, m: np.ndarray, hl: int, hr: int, rows: Rows):
    starts, _, keys, ks = _small_keys(hl, hr)
    key = starts[m] + r[:, 0]
    at = np.searchsorted(keys, key, side="right") - 1
    kl = ks[at]
    rem, div = key - keys[at], _comb_u64(hr)[m - kl]
    q = rem // div
    return q[:, None], (rem - q * div)[:, None], kl


def _kind(hl: int, hr: int):
    """The join and split of a kind of pair."""
    if hl + hr <= _SMALL:
        return _join_small, _split_small
    if hl <= _SMALL and hl + hr <= 2 * _SMALL:
        return _join2, _split2
    return _join, _split


# Pairs of at most 128 groups whose left node has at most 64: one-word children, two-word ranks,
# in numpy with 32-bit halves and no classes.
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def _mul64(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a * b`` of uint64 arrays as (low word, high word)."""
    a0, a1, b0, b1 = a & _M32, a >> _S32, b & _M32, b >> _S32
    p00, p01, p10 = a0 * b0, a0 * b1, a1 * b0
    mid = (p00 >> _S32) + (p01 & _M32) + (p10 & _M32)
    return (p00 & _M32) | (mid << _S32), a1 * b1 + (p01 >> _S32) + (p10 >> _S32) + (mid >> _S32)


def _add128(lo, hi, lo2, hi2) -> tuple[np.ndarray, np.ndarray]:
    low = lo + lo2
    return low, hi + hi2 + (low < lo)


def _sub128(lo, hi, lo2, hi2) -> tuple[np.ndarray, np.ndarray]:
    return lo - lo2, hi - hi2 - (lo < lo2)


def _to_float(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A two-word two's-complement number as float64 (relative error below ``2**-52``; the low
    word is taken signed, so a number that fits one word has no cancellation)."""
    top = hi.view(np.int64) + (lo >> np.uint64(63)).view(np.int64)
    return top.astype(np.float64) * 2.0**64 + lo.view(np.int64).astype(np.float64)


def _join2(rl, rr, kl, kr, hl: int, hr: int, rows: Rows) -> np.ndarray:
    lo, hi = _mul64(rl[:, 0], _comb_u64(hr)[kr])
    lo, hi = _add128(lo, hi, rr[:, 0], np.zeros_like(hi))
    off = _offsets(hl, hr, kl + kr, kl, rows)
    lo, hi = _add128(lo, hi, off[:, 0], off[:, 1])
    return np.stack([lo, hi], axis=1)


def _split2(r: np.ndarray, m: np.ndarray, hl: int, hr: int, rows: Rows):
    """``_split`` for ``_join2``'s pairs: ``q = rem // c`` from a float64 estimate, refined by
    the float quotient of the exact remainder (then within two of ``q``) and corrected."""
    kl, off = _search(r, m, hl, hr, rows)
    lo, hi = _sub128(r[:, 0], r[:, 1], off[:, 0], off[:, 1])  # below C(h_L, k_L) * c < 2**122
    c = _comb_u64(hr)[m - kl]  # below 2**61
    cf = c.astype(np.float64)
    q = np.floor(_to_float(lo, hi) / cf).astype(np.int64)  # off by at most 2**9
    for _ in range(2):  # the second pass leaves |rem - q c| < 2c
        plo, phi = _mul64(q.view(np.uint64), c)
        q += np.floor(_to_float(*_sub128(lo, hi, plo, phi)) / cf).astype(np.int64)
    plo, phi = _mul64(q.view(np.uint64), c)
    rest = _sub128(lo, hi, plo, phi)[0].view(np.int64)  # exact: |rest| < 2**63
    ci = c.view(np.int64)
    for _ in range(3):
        low, high = rest < 0, rest >= ci
        q += high.astype(np.int64) - low
        rest += np.where(low, ci, 0) - np.where(high, ci, 0)
    return q.view(np.uint64)[:, None], rest.view(np.uint64)[:, None], kl


def _join(rl, rr, kl, kr, hl: int, hr: int, rows: Rows) -> np.ndarray:
    """Ranks ``off(m, k_L) + r_L * C(h_R, k_R) + r_R`` of ``N`` pairs (words in, words out)."""
    n, width = len(kl), words_for(hl + hr)
    order = _order(kr)
    ordered, left = kr[order], _widen(rl[order], width)
    comb, parts = _comb_row(hr), []
    for k, a, b in _runs(ordered):  # every field stays below C(h, m) <= 2**h: no overflow
        c = comb[k]
        chunk = left[a:b]
        parts.append(
            chunk.tobytes()
            if c == 1
            else (_pack(chunk, width) * c).to_bytes(8 * width * (b - a), "little")
        )
    off = _offsets(hl, hr, kl + kr, kl, rows)[order]
    total = int.from_bytes(b"".join(parts), "little") + _pack(rr[order], width)
    out = np.empty((n, width), dtype=np.uint64)
    out[order] = _unpack(total + _pack(off, width), n, width)
    return out


@cache
def _shifts(h: int) -> np.ndarray:
    """Per ``m`` the shift that leaves 63 bits of ``C(h, m)`` (``_Row.shift``)."""
    return np.array([max(0, math.comb(h, m).bit_length() - 63) for m in range(h + 1)])


def _prefixes(r: np.ndarray, m: np.ndarray, h: int) -> np.ndarray:
    """``r >> shift(m)`` of every node (below ``2**63``, as ``r < C(h, m)``)."""
    shift = _shifts(h)[m]
    q, b = shift // 64, (shift % 64).astype(np.uint64)
    width = r.shape[1]
    low = np.take_along_axis(r, q[:, None], axis=1)[:, 0] >> b
    up = np.take_along_axis(r, np.minimum(q + 1, width - 1)[:, None], axis=1)[:, 0]
    return low | np.where(q + 1 < width, up, 0).astype(np.uint64) << (np.uint64(64) - b)


def _search(r: np.ndarray, m: np.ndarray, hl: int, hr: int, rows: Rows):
    """Per node the largest ``k`` with ``off(m, k) <= r``, and that ``off`` as words.

    Every row is grown until it holds its nodes (``_Row.cover_ranks``), the rows are laid end
    to end, and each node searches its own row's prefixes in power-of-two steps; only where a
    node's prefix equals the entry found can that entry exceed the rank, and there Python
    integers decide."""
    if not len(m):
        return np.zeros(0, dtype=np.int64), np.zeros((0, words_for(hl + hr)), dtype=np.uint64)
    p = _prefixes(r, m, hl + hr)
    order = _order(m)
    runs = _runs(m[order])
    starts = [a for _, a, _ in runs]
    low, high = np.minimum.reduceat(p[order], starts), np.maximum.reduceat(p[order], starts)
    held = {}
    for (mv, _, _), lo_p, hi_p in zip(runs, low.tolist(), high.tolist()):
        held[mv] = row = _row(hl, hr, mv, rows)
        row.cover_ranks(lo_p, hi_p)
    base, length, k0, words = _tables(hl, hr, held)
    prefix = np.concatenate([row.prefix for row in held.values()])
    first = base[m]
    last = first + length[m] - 1
    at = first.copy()
    step = 1 << int((last - first).max(initial=0)).bit_length()
    while step := step >> 1:
        nxt = np.minimum(at + step, last)
        at += (prefix[nxt] <= p) * (nxt - at)
    for i in np.flatnonzero(prefix[at] == p).tolist():  # ties: exactly
        row = held[int(m[i])]
        at[i] = base[m[i]] + bisect_right(row.ints, to_ints(r[i : i + 1])[0]) - 1
    return at - first + k0[m], words[at]


def _divmod(a: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a // c, a % c)`` of every row of words, ``c >= 2``.

    With ``N = 64 * width`` (every ``a < 2**N``) and ``mu = floor(2**N / c)``,
    ``a * mu / 2**N > a / c - 1``, so ``(a * mu) >> N`` (the words above ``N`` of each product
    field) is ``a // c`` or one less; one packed comparison corrects it."""
    n, width = a.shape
    mu = (1 << 64 * width) // c  # below 2**(N - t) with 2**t <= c
    wide = width + words_for(64 * width - c.bit_length() + 2)  # a * mu < 2**(64 * wide)
    q = _unpack(_pack(a, wide) * mu, n, wide)[:, width : 2 * width]
    rem = _pack(a, width) - _pack(q, width) * c  # every field in [0, 2c)
    g = c.bit_length() + 1  # 2c < 2**g <= 2**(64 * width - 1)
    lift = int.from_bytes(((1 << g) - c).to_bytes(8 * width, "little") * n, "little")
    low, high = _unpack(rem, n, width), _unpack(rem + lift, n, width).copy()
    over = ((high[:, g // 64] >> np.uint64(g % 64)) & np.uint64(1)).astype(bool)
    if not over.any():
        return q, low
    high[:, g // 64] &= ~np.uint64(1 << (g % 64))  # rem + 2**g - c with bit g cleared: rem - c
    out = np.where(over[:, None], high, low)
    q = q.copy()
    carry = over
    for j in range(width):  # q += over, carrying
        q[:, j] += carry
        carry = carry & (q[:, j] == 0)
        if not carry.any():
            break
    return q, out


def _split(r: np.ndarray, m: np.ndarray, hl: int, hr: int, rows: Rows):
    """Inverse of ``_join``: ``(r_L, r_R, k_L)`` of ``N`` nodes of ``m`` kept groups."""
    n, width = r.shape
    kl, off = _search(r, m, hl, hr, rows)
    kr = m - kl
    order = _order(kr)
    ordered = kr[order]
    off = off[order]
    rem = _unpack(_pack(r[order], width) - _pack(off, width), n, width)  # every field >= 0
    wl, wr = words_for(hl), words_for(hr)
    left, right = np.zeros((n, wl), dtype=np.uint64), np.zeros((n, wr), dtype=np.uint64)
    comb = _comb_row(hr)
    for k, a, b in _runs(ordered):
        if comb[k] == 1:
            left[a:b] = rem[a:b, :wl]
            continue
        q, rest = _divmod(rem[a:b], comb[k])
        left[a:b], right[a:b] = q[:, :wl], rest[:, :wr]
    rl, rr = np.empty_like(left), np.empty_like(right)
    rl[order], rr[order] = left, right
    return rl, rr, kl


# -- whole trees, every layer at once -------------------------------------------------------------


class _Tree:
    """One job's level being built: ranks ``r (D, nodes, words)`` and kept counts ``k``."""

    def __init__(self, g: int, r: np.ndarray, k: np.ndarray) -> None:
        self.levels, self.r, self.k = _sizes(g), r, k


def _gather(trees: list[_Tree], parts: list[tuple[int, np.ndarray]], side: int, words: int):
    """Ranks and counts of the nodes ``2 * cols + side`` of every ``(tree, cols)`` in one flat
    array (``side`` None: the nodes ``cols`` themselves)."""
    idx = [(i, cols if side is None else 2 * cols + side) for i, cols in parts]
    r = np.concatenate([trees[i].r[:, c, :words].reshape(-1, words) for i, c in idx])
    k = np.concatenate([trees[i].k[:, c].reshape(-1) for i, c in idx])
    return r, k


def split_rank_words(keeps: list[np.ndarray], rows: Rows | None = None) -> list[np.ndarray]:
    """The split rank of every row of each bool ``keep (D, G)`` (the same count kept on every
    row of one array), as ``(D, words_for(G))`` words; the arrays' nodes of one level are joined
    together."""
    rows = {} if rows is None else rows
    count, rank, _, _ = _leaf_tables()
    trees = []
    for keep in keeps:
        d, g = keep.shape
        padded = np.zeros((d, -(-g // LEAF) * LEAF), dtype=bool)
        padded[:, :g] = keep
        masks = np.packbits(padded, axis=1, bitorder="little").view("<u2")
        trees.append(_Tree(g, rank[masks][..., None], count[masks]))
    level = 0
    while live := [i for i, t in enumerate(trees) if len(t.levels) - 1 > level]:
        kinds: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
        ups = {}
        for i in live:
            t, sizes = trees[i], trees[i].levels[level]
            d, npair, odd = t.r.shape[0], len(sizes) // 2, len(sizes) % 2
            up_r = np.zeros((d, npair + odd, words_for(2 * sizes[0])), dtype=np.uint64)
            up_k = t.k[:, 0 : 2 * npair : 2] + t.k[:, 1 : 2 * npair : 2]
            for hl, hr, cols in _pair_kinds(sizes):
                kinds.setdefault((hl, hr), []).append((i, cols))
            if odd:
                up_r[:, -1, : t.r.shape[2]] = t.r[:, -1]
                up_k = np.concatenate([up_k, t.k[:, -1:]], axis=1)
            ups[i] = (up_r, up_k)
        for (hl, hr), parts in kinds.items():
            rl, kl = _gather(trees, parts, 0, words_for(hl))
            rr, kr = _gather(trees, parts, 1, words_for(hr))
            joined, at = _kind(hl, hr)[0](rl, rr, kl, kr, hl, hr, rows), 0
            for i, cols in parts:
                up_r = ups[i][0]
                size = up_r.shape[0] * len(cols)
                up_r[:, cols, : joined.shape[1]] = joined[at : at + size].reshape(
                    up_r.shape[0], len(cols), -1
                )
                at += size
        for i in live:
            trees[i].r, trees[i].k = ups[i]
        level += 1
    return [t.r[:, 0, : words_for(t.levels[-1][0])] for t in trees]


def split_keep_words(
    jobs: list[tuple[np.ndarray, int, int]], rows: Rows | None = None
) -> list[np.ndarray]:
    """Inverse of ``split_rank_words`` for ``(ranks as words (D, w), G, n)`` jobs whose ranks
    are below ``C(G, n)``: bool ``(D, G)`` with ``n`` kept per row."""
    rows = {} if rows is None else rows
    trees = [
        _Tree(g, _widen(words, words_for(g))[:, None, :], np.full((len(words), 1), n))
        for words, g, n in jobs
    ]
    for level in range(max(len(t.levels) for t in trees) - 2, -1, -1) if trees else ():
        kinds: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
        downs = {}
        for i, t in enumerate(trees):
            if len(t.levels) - 1 <= level:
                continue
            sizes, d = t.levels[level], t.r.shape[0]
            down_r = np.zeros((d, len(sizes), words_for(sizes[0])), dtype=np.uint64)
            down_k = np.empty((d, len(sizes)), dtype=np.int64)
            for hl, hr, cols in _pair_kinds(sizes):
                kinds.setdefault((hl, hr), []).append((i, cols))
            if len(sizes) % 2:
                down_r[:, -1] = t.r[:, -1, : down_r.shape[2]]
                down_k[:, -1] = t.k[:, -1]
            downs[i] = (down_r, down_k)
        for (hl, hr), parts in kinds.items():
            r, m = _gather(trees, parts, None, words_for(hl + hr))
            rl, rr, kl = _kind(hl, hr)[1](r, m, hl, hr, rows)
            at = 0
            for i, cols in parts:
                down_r, down_k = downs[i]
                d = down_r.shape[0]
                part = slice(at, at + d * len(cols))
                down_r[:, 2 * cols, : rl.shape[1]] = rl[part].reshape(d, len(cols), -1)
                down_r[:, 2 * cols + 1, : rr.shape[1]] = rr[part].reshape(d, len(cols), -1)
                down_k[:, 2 * cols] = kl[part].reshape(d, -1)
                down_k[:, 2 * cols + 1] = m[part].reshape(d, -1) - down_k[:, 2 * cols]
                at += d * len(cols)
        for i, (down_r, down_k) in downs.items():
            trees[i].r, trees[i].k = down_r, down_k
    _, _, masks, start = _leaf_tables()
    out = []
    for t, (_, g, _) in zip(trees, jobs):
        leaves = masks[start[t.k] + t.r[..., 0].astype(np.int64)]
        keep = np.unpackbits(leaves.astype("<u2").view(np.uint8), axis=1, bitorder="little")
        out.append(keep[:, :g].view(bool))
    return out


# -- positions and Python integers ----------------------------------------------------------------


def keep_of(pos: np.ndarray, g: int) -> np.ndarray:
    """Bool ``(D, g)`` from ascending positions ``(D, n)``."""
    keep = np.zeros((pos.shape[0], g), dtype=bool)
    np.put_along_axis(keep, pos, True, axis=1)
    return keep


def positions_of(keep: np.ndarray) -> np.ndarray:
    """Inverse of ``keep_of`` (every row keeping as many)."""
    d, g = keep.shape
    flat = np.flatnonzero(keep)
    return flat.reshape(d, -1) - g * np.arange(d)[:, None]


def split_ranks(pos: np.ndarray, g: int, rows: Rows | None = None) -> list[int]:
    """The split rank of every row of ascending positions ``pos (D, n)`` among ``g`` groups."""
    if pos.shape[0] == 0:
        return []
    return to_ints(split_rank_words([keep_of(pos, g)], rows)[0])


def split_positions(ranks: list[int], g: int, n: int, rows: Rows | None = None) -> np.ndarray:
    """Inverse of ``split_ranks`` for ranks below ``C(g, n)``: ``(D, n)`` ascending positions."""
    if not ranks or n == 0:
        return np.zeros((len(ranks), n), dtype=np.int64)
    words = from_ints(ranks, words_for(g))
    return positions_of(split_keep_words([(words, g, n)], rows)[0])
