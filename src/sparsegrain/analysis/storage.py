"""Bits to store one layer's sparse weight, per encoding, and the bound no encoding can beat.

Input: a weight with exact zeros, or a bool mask (True / non-zero = kept), and a structure name;
never the method that made them. A weight is viewed as ``(K, C, R, S)`` (``shape_4d``) and
flattened row-major, i.e. over the ``(K, C*R*S)`` GEMM view with columns in ``(c, r, s)`` order:
position ``p = ((k*C + c)*R + r)*S + s``. ``N = K*C*R*S``, ``nnz`` = non-zero entries,
``v = BitWidths.value``, ``b = BitWidths.index``.

Encodings (bits; per-layer headers such as the shape, the entry count or the quota ``n`` are
not counted):

- ``bitmap``: ``N + nnz*v``; one bit per weight, then the values of the non-zeros.
- ``csr``: relative index (Deep Compression, Han et al. 2016, sec. 3 and fig. 2). The non-zeros
  at positions ``p_1 < p_2 < ...`` are stored as (value, gap) pairs of ``v + b`` bits. The first
  gap is counted from position 0 (``gap_1 = p_1``, so an entry at position 0 has gap 0, as in
  fig. 2 where the entry at index 1 has diff 1); later gaps are ``p_i - p_{i-1}``. A gap must be at
  most ``L = 2**b - 1``; a larger gap ``g`` is bridged by ``(g - 1) // L`` filler entries (value
  zero, gap ``L``), each costing ``v + b``. So ``csr = (nnz + fillers) * (v + b)``. Fig. 2 lets a
  3-bit gap reach 8 (it stores ``gap - 1``); here a gap reaches ``2**b - 1`` and the code 0 is
  only used by an entry at position 0. No row pointers: gaps run across rows.
- ``group`` (coarse structures: vector, kernel, filter, channel, shape, block; kernel-quota and
  combined at kernel granularity; the groups of ``Structure.index_group``): groups are taken in
  its ``group_view`` order (kernels in ``(k, c)`` order for kernel, kernel-quota and combined;
  columns in ``(c, r, s)`` order for shape; blocks row-major over the GEMM view). A group is
  kept when it holds any non-zero, and all ``E`` elements of a kept group are stored as values,
  zeros included. The kept groups are addressed by whichever is smaller in total: ``relative``
  (the csr rule above on the group sequence; a filler is a whole group of ``E`` zero values plus
  its gap) or ``bitmap`` (one bit per group); ties go to ``bitmap``. ``group = address +
  kept*E*v``.
- ``quota`` and ``quota-rank`` (balanced structures: window, kernel-quota, nm, combined): every
  domain of ``G`` groups keeps the same count ``n`` (the largest count over the domains; a domain
  with fewer kept groups stores extra zero groups). ``quota`` stores each kept group's position in
  its domain, ``ceil(log2 G)`` bits per kept group; ``quota-rank`` stores per domain the rank of
  its subset among all ``C(G, n)``, ``ceil(log2 C(G, n))`` bits. Both add ``D*n*E*v`` value bits.
  N:M metadata as sparse tensor cores use it is ``quota`` with ``G = M`` (2:4 -> 2 bits per kept
  element). Combined has two levels (``Structure.quota_levels``): per filter ``m`` of ``C``
  kernels, then per kept kernel ``n`` of ``R*S`` elements (``n`` the largest count over kept
  kernels).

The bound: ``log2`` of the number of masks the structure allows at the observed count, plus the
value bits of what that description stores, taken as the smallest over the levels at which the
structure describes the layer:

- fine level (every structure): ``log2 C(N, nnz) + nnz*v``;
- group level (coarse structures): ``log2 C(D*G, kept) + kept*E*v``;
- balanced level: ``D * log2 C(G, n) + D*n*E*v`` (combined: ``K log2 C(C, m) +
  K*m log2 C(R*S, n) + K*m*n*v``).

For a mask of the structure this is the structure's own term (the finer levels are never
smaller); the other levels only matter when kept groups hold zeros. The bound is at most every
fixed-length encoding on every mask (``bitmap``, ``quota``, ``quota-rank``, ``group`` with bitmap
addressing) and at most every encoding's worst case at that count. A variable-length code
(``csr``, ``group`` with relative addressing) spends fewer bits on favourable masks (non-zeros
clustered so that gaps are short) and more on others, so on a particular mask it can go below the
bound; ``layer_storage`` lists such encodings under ``below_bound``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..core.tables import format_table
from ..structures import Structure, parse_structure
from .counting import (
    ceil_log2,
    kept_groups,
    last_values,
    level_counts,
    log2_comb,
    mask_fillers,
    occupancy,
)

ENCODINGS = ("bitmap", "csr", "group", "quota", "quota-rank")
DENSE_NOTE = "a layer left dense is stored dense: BitWidths.dense (32) bits per weight"


@dataclass(frozen=True)
class BitWidths:
    """Bit widths: ``value`` per stored value, ``index`` per relative index (csr, group
    relative), ``dense`` per weight of the dense baseline (fp32: 32)."""

    value: int = 32
    index: int = 4
    dense: int = 32

    def __post_init__(self) -> None:
        for name, low in (("value", 0), ("index", 1), ("dense", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"BitWidths.{name} must be an integer >= {low}, got {v!r}")


@dataclass(frozen=True)
class Cost:
    """Bits of one encoding: ``value`` (stored values) + ``index`` (indices and metadata)."""

    value: int
    index: int
    fillers: int = 0  # csr / group relative: filler entries (their bits are already included)
    addressing: str = ""  # group: "relative" or "bitmap"

    @property
    def total(self) -> int:
        return self.value + self.index


# -- exact integer helpers ------------------------------------------------------------------------


def _group_cost(kept: np.ndarray, e: int, bits: BitWidths) -> Cost:
    n_kept = int(np.count_nonzero(kept))
    fillers = mask_fillers(kept, bits.index)
    values = n_kept * e * bits.value
    # Relative addressing: every entry has a gap; a filler also stores a group of E zero values.
    rel_index, rel_extra = (n_kept + fillers) * bits.index, fillers * e * bits.value
    if rel_index + rel_extra < kept.size:
        return Cost(values + rel_extra, rel_index, fillers, "relative")
    return Cost(values, kept.size, 0, "bitmap")


def _quota_costs(occ4: np.ndarray, st: Structure, bits: BitWidths) -> dict[str, Cost]:
    levels = level_counts(occ4, st)
    values = last_values(occ4, st, levels) * bits.value
    pos = sum(d * n * ceil_log2(g) for d, g, n in levels)
    rank = sum(d * ceil_log2(math.comb(g, n)) for d, g, n in levels)
    return {"quota": Cost(values, pos), "quota-rank": Cost(values, rank)}


def _csr_cost(occ4: np.ndarray, nnz: int, bits: BitWidths) -> Cost:
    fillers = mask_fillers(occ4.reshape(-1), bits.index)
    return Cost((nnz + fillers) * bits.value, (nnz + fillers) * bits.index, fillers)


def _costs(occ4: np.ndarray, nnz: int, st: Structure, bits: BitWidths, all_: bool = True):
    """``encode``'s costs from the occupancy; ``all_=False`` leaves csr out when it cannot be
    the smallest (``nnz * (v + b)``, its cost without fillers, above another encoding's)."""
    out = {"bitmap": Cost(nnz * bits.value, occ4.size)}
    gst = st.index_group
    if gst is not None:
        out["group"] = _group_cost(*kept_groups(occ4, gst), bits)
    if st.balanced:
        out.update(_quota_costs(occ4, st, bits))
    if all_ or nnz * (bits.value + bits.index) <= min(c.total for c in out.values()):
        out["csr"] = _csr_cost(occ4, nnz, bits)
    return {name: out[name] for name in ENCODINGS if name in out}


def _best(costs: dict[str, Cost]) -> str:
    """The smallest encoding; ties to the earlier one in ``ENCODINGS`` (``costs``' order)."""
    return min(costs, key=lambda name: costs[name].total)


def encode(t: Tensor, structure: str | Structure, bits: BitWidths | None = None) -> dict[str, Cost]:
    """Every encoding that applies to ``structure``, as ``{name: Cost}`` (see the module doc)."""
    bits = bits or BitWidths()
    st = parse_structure(structure)
    occ4 = occupancy(t, st)
    return _costs(occ4, int(np.count_nonzero(occ4)), st, bits)


def best_encoding(
    t: Tensor, structure: str | Structure, bits: BitWidths | None = None
) -> tuple[str, Cost]:
    """``layer_storage``'s ``best`` encoding and its ``Cost``, without the bound and the
    encodings that cannot be the smallest: what a writer of the format needs."""
    bits = bits or BitWidths()
    st = parse_structure(structure)
    occ4 = occupancy(t, st)
    costs = _costs(occ4, int(np.count_nonzero(occ4)), st, bits, all_=False)
    best = _best(costs)
    return best, costs[best]


def _bound(occ4: np.ndarray, nnz: int, st: Structure, bits: BitWidths) -> float:
    terms = [log2_comb(occ4.size, nnz) + nnz * bits.value]
    gst = st.index_group
    if gst is not None:
        kept, e = kept_groups(occ4, gst)
        n_kept = int(np.count_nonzero(kept))
        terms.append(log2_comb(kept.size, n_kept) + n_kept * e * bits.value)
    if st.balanced:
        levels = level_counts(occ4, st)
        index = sum(d * log2_comb(g, n) for d, g, n in levels)
        terms.append(index + last_values(occ4, st, levels) * bits.value)
    return min(terms)


def bound(t: Tensor, structure: str | Structure, bits: BitWidths | None = None) -> float:
    """The smallest, over the structure's levels, of ``log2 #masks + value bits`` (module doc)."""
    bits = bits or BitWidths()
    st = parse_structure(structure)
    occ4 = occupancy(t, st)
    return _bound(occ4, int(np.count_nonzero(occ4)), st, bits)


# -- per layer and per model ----------------------------------------------------------------------


def layer_storage(
    weight_or_mask: Tensor, structure: str | Structure | None, bits: BitWidths | None = None
) -> dict:
    """Bits per encoding for one layer, with ``best``, ``bound``, ``dense`` and ``ratio``.

    Keys: every applicable encoding name -> total bits (absent when it does not apply);
    ``detail`` (name -> value / index bits, fillers, addressing); ``best`` (the smallest
    encoding; ties to the earlier one in ``ENCODINGS``), ``best_bits``; ``bound`` (float);
    ``below_bound`` (encodings under the bound: only variable-length ones can be); ``dense``
    (``bits.dense * numel``); ``ratio`` (``dense / best_bits``; below 1 when no encoding pays);
    and ``structure``, ``shape``, ``numel``, ``nnz``, ``sparsity``. ``structure=None`` means the
    layer is left dense: it is stored dense and ``best`` is ``"dense"``.
    """
    bits = bits or BitWidths()
    t = weight_or_mask
    numel = t.numel()
    row: dict = {"shape": list(t.shape), "numel": numel}
    if structure is None:
        nnz = int(torch.count_nonzero(t.detach()))
    else:
        st = parse_structure(structure)
        occ4 = occupancy(t, st)
        nnz = int(np.count_nonzero(occ4))
    dense = bits.dense * numel
    row.update(nnz=nnz, sparsity=(numel - nnz) / numel if numel else 0.0, dense=dense)
    if structure is None:
        row.update(structure="dense", detail={}, best="dense", best_bits=dense, bound=float(dense))
        row.update(below_bound=[], ratio=1.0)
        return row
    costs = _costs(occ4, nnz, st, bits)
    best = _best(costs)
    lower = _bound(occ4, nnz, st, bits)
    row["structure"] = st.spec
    row.update({name: c.total for name, c in costs.items()})
    row["detail"] = {
        name: {"value": c.value, "index": c.index, "fillers": c.fillers, "addressing": c.addressing}
        for name, c in costs.items()
    }
    row.update(best=best, best_bits=costs[best].total, bound=lower)
    row["below_bound"] = [name for name, c in costs.items() if c.total < lower]
    row["ratio"] = dense / costs[best].total if costs[best].total else math.inf
    return row


def model_storage(
    layers: Sequence[tuple[str, Tensor, str | Structure | None]], bits: BitWidths | None = None
) -> dict:
    """Per-layer rows (``layer_storage`` plus ``name``) and totals over ``(name, tensor,
    structure)`` triples; ``structure=None`` is a layer left dense, stored dense.

    ``total`` holds ``dense``, ``best`` (each layer at its own best; dense layers dense), ``bound``
    (dense layers at their dense bits), ``ratio`` (``dense / best``), and the total of every
    encoding that applies to every sparse layer (dense layers counted dense in it).
    """
    bits = bits or BitWidths()
    rows = [{"name": name, **layer_storage(t, st, bits)} for name, t, st in layers]
    sparse = [r for r in rows if r["structure"] != "dense"]
    dense_bits = sum(r["dense"] for r in rows if r["structure"] == "dense")
    total: dict = {
        "dense": sum(r["dense"] for r in rows),
        "best": sum(r["best_bits"] for r in rows),
        "bound": sum(r["bound"] for r in rows),
    }
    for name in ENCODINGS:
        if sparse and all(name in r for r in sparse):
            total[name] = dense_bits + sum(r[name] for r in sparse)
    total["ratio"] = total["dense"] / total["best"] if total["best"] else math.inf
    return {"layers": rows, "total": total, "bits": bits, "note": DENSE_NOTE}


def _kib(x: float) -> str:
    return f"{x / 8 / 1024:.1f}"


def format_storage(result: dict) -> str:
    """A table in KiB (bits / 8192) of ``model_storage``'s result, with the totals and the note."""
    cols = ("bitmap", "csr", "group", "quota", "quota-rank")
    head = ["layer", "structure", "sparsity", *cols, "best", "bound", "dense", "ratio"]

    def line(name: str, r: dict, structure: str, sparsity: str, best: str) -> list[str]:
        cells = [_kib(r[c]) if c in r else "-" for c in cols]
        extra = [best, _kib(r["bound"]), _kib(r["dense"]), f"{r['ratio']:.2f}"]
        return [name, structure, sparsity, *cells, *extra]

    rows = [
        line(r["name"], r, r["structure"], f"{r['sparsity']:.3f}", r["best"])
        for r in result["layers"]
    ]
    rows.append(line("total", result["total"], "", "", _kib(result["total"]["best"])))
    b = result["bits"]
    foot = f"KiB; value {b.value} bits, index {b.index} bits; {result['note']}"
    return format_table(rows, head) + "\n" + foot
