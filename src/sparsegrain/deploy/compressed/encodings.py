"""One sparse layer's section of a compressed file, in the encoding storage.py counts, bit-exact.

A section holds the value codes first (so they stay byte aligned), then the index bits, fields
most significant bit first, zero padded to a whole byte (at most 7 bits per section). With
``v`` value bits, ``b`` index bits and groups in the structure's ``group_view`` order:

- ``bitmap``: the nnz values in position order, then N mask bits.
- ``csr``: the values of all entries (fillers hold 0), then one ``b``-bit gap per entry.
- ``group``: ``E`` values per entry (kept groups of ``Structure.index_group``, and fillers of
  zeros when addressing is relative), then one ``b``-bit gap per entry (relative) or one bit per
  group (bitmap).
- ``quota``: ``D*n*E`` values (domain by domain, positions ascending), then ``D*n`` positions
  of ``ceil(log2 G)`` bits; a domain holding fewer than ``n`` groups is padded with its first
  empty groups (stored zeros). A structure of several ``quota_levels`` stores the positions of
  every level in turn; combined: kernel positions (level 1), then element positions inside the
  ``K*m`` selected kernels (level 2).
- ``quota-rank``: the same values, then per domain the colexicographic rank of its sorted
  positions ``c_0 < c_1 < ...``, ``sum_i C(c_i, i + 1)``, in ``ceil(log2 C(G, n))`` bits.

Values: ``bits.value = 32`` stores the float32 bit pattern (exact for float32, float16 and
bfloat16 weights); ``16`` stores float16, which is lossy (rounding to 11 significant bits,
overflow beyond 65504 to inf, tiny values to 0). Zeros come back as +0.0: the sign of a zero is
not stored (storage.py counts no bit for it; a finalized model holds -0.0 wherever a negative
weight was multiplied by a 0 mask). Every other value comes back with its exact bits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ...analysis.storage import BitWidths, ceil_log2
from ...core.errors import unknown_name
from ...structures import Structure, parse_structure, shape_4d
from .bits import (
    BitReader,
    BitWriter,
    check_bits,
    from_codes,
    gap_positions,
    read_ranks,
    relative_gaps,
    value_codes,
    write_ranks,
)

Levels = list[tuple[int, int, int]]  # (D, G, n) per quota level


# -- writing --------------------------------------------------------------------------------------


def _select(kept: np.ndarray, n: int) -> np.ndarray:
    """``(D, n)`` ascending positions per domain: the kept groups, then the first empty ones."""
    if kept.size == 0:
        return np.zeros((kept.shape[0], n), dtype=np.int64)
    # The first n - (kept count) empty groups of each domain fill it up to n.
    room = n - np.count_nonzero(kept, axis=1)
    pick = kept | (np.cumsum(~kept, axis=1) <= room[:, None])
    return np.nonzero(pick)[1].reshape(kept.shape[0], n)


def _quota_select(codes4: Tensor, occ4: Tensor, st: Structure):
    """Levels ``[(D, G, n)]`` of ``st.quota_levels``, each level's ``(D, n)`` positions, and the
    ``(D, n, E)`` value codes of the last level (numpy arrays)."""
    shape4 = tuple(occ4.shape)
    levels: Levels = []
    sel: list[np.ndarray] = []
    for level in st.quota_levels:
        if not levels:
            occ_v, codes_v = level.group_view(occ4).numpy(), level.group_view(codes4).numpy()
        else:  # this level's domains are the groups the level above selected
            _, g, e = level.layout(shape4)
            occ_v, codes_v = occ_v.reshape(-1, g, e), codes_v.reshape(-1, g, e)
        kept = occ_v.any(-1)
        n = int(np.count_nonzero(kept, axis=1).max()) if kept.size else 0
        pos = _select(kept, n)
        occ_v = np.take_along_axis(occ_v, pos[..., None], axis=1)
        codes_v = np.take_along_axis(codes_v, pos[..., None], axis=1)
        levels.append((*kept.shape, n))
        sel.append(pos)
    return levels, sel, codes_v


def _write_entries(
    wr: BitWriter, codes2: Tensor, kept: Tensor, addressing: str | None, bits: BitWidths
) -> dict:
    """csr and group: the kept rows of ``codes2 (groups, E)``, addressed relative or by bitmap
    (None: whichever storage.py counts as smaller)."""
    kept_np = kept.numpy()
    kept_codes = codes2.numpy()[kept_np]
    gaps, real = relative_gaps(np.flatnonzero(kept_np), bits.index)
    if addressing is None:  # storage.py's group rule: relative when smaller, ties to bitmap
        fillers = gaps.size - len(kept_codes)
        smaller = gaps.size * bits.index + fillers * codes2.shape[1] * bits.value < kept_np.size
        addressing = "relative" if smaller else "bitmap"
    if addressing == "relative":
        vals = np.zeros((gaps.size, codes2.shape[1]), dtype=np.int64)
        vals[real] = kept_codes
        wr.write(vals, bits.value)
        wr.write(gaps, bits.index)
    else:
        vals = kept_codes
        wr.write(vals, bits.value)
        wr.write(kept_np, 1)
    counts = {"entries": len(vals), "fillers": len(vals) - len(kept_codes)}
    counts["addressing"] = addressing
    return counts


def _write_quota(
    wr: BitWriter, codes4: Tensor, occ4: Tensor, st: Structure, encoding: str, v: int
) -> dict:
    levels, sel, vals = _quota_select(codes4, occ4, st)
    wr.write(vals, v)
    for (_, g, n), pos in zip(levels, sel):
        if encoding == "quota":
            wr.write(pos, ceil_log2(g))
        else:
            write_ranks(wr, pos, g, n)
    return {"levels": [list(lv) for lv in levels]}


def encode_layer(
    weight: Tensor, structure: str | Structure, encoding: str, bits: BitWidths | None = None
) -> dict:
    """One layer's section: ``{"data": bytes, "bits": exact bit count, "counts": {...}}``."""
    bits = check_bits(bits or BitWidths())
    st = parse_structure(structure)
    reason = st.fits(weight.shape)
    if reason is not None:
        raise ValueError(f"structure does not fit weight shape {tuple(weight.shape)}: {reason}")
    names = ["bitmap", "csr"] + ["group"] * (st.index_group is not None)
    names += ["quota", "quota-rank"] * st.balanced
    if encoding not in names:
        raise unknown_name(f"encoding for structure {st.spec}", encoding, names)
    w4 = weight.detach().cpu().reshape(shape_4d(weight.shape))
    codes4, occ4 = value_codes(w4, bits.value), w4 != 0
    wr = BitWriter()
    if encoding == "bitmap":
        occ = occ4.numpy().reshape(-1)
        wr.write(codes4.numpy().reshape(-1)[occ], bits.value)
        wr.write(occ, 1)
        counts = {"values": int(np.count_nonzero(occ))}
    elif encoding == "csr":
        counts = _write_entries(wr, codes4.reshape(-1, 1), occ4.reshape(-1), "relative", bits)
    elif encoding == "group":
        gst = st.index_group
        e = gst.layout(tuple(occ4.shape))[2]
        kept = gst.group_view(occ4).any(-1).reshape(-1)
        counts = _write_entries(wr, gst.group_view(codes4).reshape(-1, e), kept, None, bits)
    else:
        counts = _write_quota(wr, codes4, occ4, st, encoding, bits.value)
    return {"data": wr.getvalue(), "bits": wr.nbits, "counts": counts}


# -- reading --------------------------------------------------------------------------------------


def _check_levels(levels: Levels, st: Structure, shape4) -> None:
    """The stored levels must be ``st.quota_levels`` on ``shape4``: below the first, ``D`` is the
    ``D * n`` groups the level above stored."""
    layouts = [level.layout(shape4) for level in st.quota_levels]
    ok = len(levels) == len(layouts)
    for i, ((d, g, n), (d0, g0, _)) in enumerate(zip(levels, layouts)):
        want_d = d0 if i == 0 else levels[i - 1][0] * levels[i - 1][2]
        ok = ok and (d, g) == (want_d, g0) and 0 <= n <= g
    if not ok:
        raise ValueError(f"quota levels {levels} do not match shape {shape4}")


def _read_positions(rd: BitReader, encoding: str, d: int, g: int, n: int) -> Tensor:
    if encoding == "quota-rank":
        return read_ranks(rd, d, g, n)
    pos = rd.read(d * n, ceil_log2(g)).astype(np.int64).reshape(d, n)
    if (pos >= g).any() or (np.diff(pos, axis=1) <= 0).any():
        raise ValueError("quota positions out of range or not ascending")
    return torch.from_numpy(pos)


def _decode_quota(rd: BitReader, st: Structure, shape4, encoding: str, counts, v: int) -> Tensor:
    levels = [tuple(int(x) for x in lv) for lv in counts["levels"]]
    _check_levels(levels, st, shape4)  # type: ignore[arg-type]
    widths = [level.layout(shape4)[2] for level in st.quota_levels]  # E per level
    d_last, _, n_last = levels[-1]
    inner = rd.read(d_last * n_last * widths[-1], v).astype(np.int64)
    sel = [np.asarray(_read_positions(rd, encoding, d, g, n)) for d, g, n in levels]
    # Innermost level first: each scatters its values into the groups the level above kept.
    for (d, g, n), pos, e in reversed(list(zip(levels, sel, widths))):
        view = np.zeros((d, g, e), dtype=np.int64)
        np.put_along_axis(view, pos[..., None], inner.reshape(d, n, e), axis=1)
        inner = view
    return st.quota_levels[0].from_group_view(torch.from_numpy(inner), shape4)


def _decode_entries(
    rd: BitReader, gst: Structure | None, shape4, counts: dict, bits: BitWidths
) -> Tensor:
    """csr (``gst`` None: one element per group) and group: the codes in ``(K, C, R, S)``."""
    d, g, e = (1, math.prod(shape4), 1) if gst is None else gst.layout(shape4)
    entries = int(counts["entries"])
    vals = rd.read(entries * e, bits.value).astype(np.int64).reshape(entries, e)
    view = np.zeros((d * g, e), dtype=np.int64)
    if counts.get("addressing", "relative") == "relative":
        view[gap_positions(rd.read(entries, bits.index), d * g)] = vals
    else:
        kept = rd.read(d * g, 1).astype(bool)
        if int(np.count_nonzero(kept)) != entries:
            raise ValueError("group bitmap and entry count disagree")
        view[kept] = vals
    out = torch.from_numpy(view)
    return out if gst is None else gst.from_group_view(out.reshape(d, g, e), shape4)


def decode_layer(
    data: bytes,
    shape: list[int] | tuple[int, ...],
    structure: str | Structure,
    encoding: str,
    counts: dict,
    bits: BitWidths | None = None,
    dtype: torch.dtype = torch.float32,
    nbits: int | None = None,
) -> Tensor:
    """Inverse of ``encode_layer``; a malformed section raises ValueError or EOFError."""
    bits = check_bits(bits or BitWidths())
    st, shape4 = parse_structure(structure), shape_4d(shape)
    reason = st.fits(shape)
    if reason is not None:
        raise ValueError(f"structure does not fit shape {tuple(shape)}: {reason}")
    rd, v, numel = BitReader(data, nbits), bits.value, math.prod(shape4)
    if encoding == "bitmap":
        vals = rd.read(int(counts["values"]), v)
        mask = rd.read(numel, 1).astype(bool)
        if int(np.count_nonzero(mask)) != vals.size:
            raise ValueError("bitmap and value count disagree")
        flat = np.zeros(numel, dtype=np.int64)
        flat[mask] = vals
        codes = torch.from_numpy(flat)
    elif encoding == "csr":
        codes = _decode_entries(rd, None, shape4, counts, bits)
    elif encoding == "group" and st.index_group is not None:
        codes = _decode_entries(rd, st.index_group, shape4, counts, bits)
    elif encoding in ("quota", "quota-rank") and st.balanced:
        codes = _decode_quota(rd, st, shape4, encoding, counts, v)
    else:
        raise ValueError(f"unknown encoding {encoding!r} for structure {st.spec}")
    if rd.pos != rd.nbits and nbits is not None:
        raise ValueError(f"section has {rd.nbits} bits, decoding used {rd.pos}")
    return from_codes(codes.reshape(-1), v, dtype).reshape(tuple(shape))
