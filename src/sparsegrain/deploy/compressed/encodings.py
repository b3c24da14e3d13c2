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
- ``quota-rank``: the same values, then per domain the rank of its sorted positions
  ``c_0 < c_1 < ...`` among the ``C(G, n)`` subsets, in ``ceil(log2 C(G, n))`` bits: the
  colexicographic rank ``sum_i C(c_i, i + 1)`` where that fits in 63 bits, else the split rank
  of ``splits.py`` (format version 2; version 1 stored the colex rank there too, ``ranks.py``).

Values: ``bits.value = 32`` stores the float32 bit pattern (exact for float32, float16 and
bfloat16 weights); ``16`` stores float16, which is lossy (rounding to 11 significant bits,
overflow beyond 65504 to inf, tiny values to 0). Zeros come back as +0.0: the sign of a zero is
not stored (storage.py counts no bit for it; a finalized model holds -0.0 wherever a negative
weight was multiplied by a 0 mask). Every other value comes back with its exact bits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from ...analysis.counting import any_last, ceil_log2
from ...analysis.storage import BitWidths
from ...core.errors import unknown_name
from ...structures import Structure, parse_structure, shape_4d
from .bits import (
    VALUE_BITS,
    BitReader,
    BitWriter,
    check_bits,
    codes_of,
    float_values,
    from_codes,
    gap_positions,
    relative_gaps,
    value_codes,
)
from .ranks import VERSION, read_ranks_many, write_ranks_many
from .splits import positions_of

Levels = list[tuple[int, int, int]]  # (D, G, n) per quota level


def map_layers(fn: Callable, items: Sequence) -> list:
    """``[fn(x) for x in items]`` on a few threads: a layer's work is numpy passes over its
    weights, which run without the interpreter lock."""
    workers = min(len(items), os.cpu_count() or 1, 4)
    if workers < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


# -- writing --------------------------------------------------------------------------------------


def _pick(kept: np.ndarray, n: int) -> np.ndarray:
    """Bool ``(D, G)``: ``n`` groups per domain, the kept ones and then the first empty ones."""
    counts = np.count_nonzero(kept, axis=1)
    if kept.size == 0 or (counts == n).all():
        return kept
    # The first n - (kept count) empty groups of each domain fill it up to n.
    return kept | (np.cumsum(~kept, axis=1) <= (n - counts)[:, None])


def _quota_select(values: np.ndarray, occ4: np.ndarray, st: Structure):
    """Levels ``[(D, G, n)]`` of ``st.quota_levels``, each level's bool ``(D, G)`` selection
    (``n`` groups per domain), and the ``(D*n, E)`` weights of the last level's selected groups
    (domain by domain, positions ascending), from numpy ``(K, C, R, S)`` weights and
    occupancy."""
    shape4 = tuple(occ4.shape)
    levels: Levels = []
    sel: list[np.ndarray] = []
    for level in st.quota_levels:
        if not levels:
            occ_v = level.group_view(torch.from_numpy(occ4)).numpy()
            val_v = level.group_view(torch.from_numpy(values)).numpy()
        else:  # this level's domains are the groups the level above selected
            _, g, e = level.layout(shape4)
            occ_v, val_v = occ_v.reshape(-1, g, e), val_v.reshape(-1, g, e)
        kept = any_last(occ_v)
        (d, g), e = kept.shape, occ_v.shape[-1]
        n = int(np.count_nonzero(kept, axis=1).max()) if kept.size else 0
        picked = _pick(kept, n)
        flat = np.flatnonzero(picked)  # domain by domain, positions ascending
        levels.append((d, g, n))
        sel.append(picked)
        val_v = np.take(val_v.reshape(d * g, e), flat, axis=0)  # (D*n, E)
        if len(levels) < len(st.quota_levels):
            occ_v = np.take(occ_v.reshape(d * g, e), flat, axis=0)
    return levels, sel, val_v


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
    wr: BitWriter, values: np.ndarray, st: Structure, encoding: str, v: int, jobs: list
) -> dict:
    """Values now; quota positions now, quota-rank ranks as ``jobs`` for ``write_ranks_many``
    (nothing follows them in the section)."""
    levels, sel, vals = _quota_select(values, values != 0, st)
    wr.write(codes_of(vals, v), v)
    for (_, g, n), picked in zip(levels, sel):
        if encoding == "quota":
            wr.write(positions_of(picked), ceil_log2(g))
        else:
            jobs.append((wr, picked, g, n))
    return {"levels": [list(lv) for lv in levels]}


def _encode(
    weight: Tensor, structure: str | Structure, encoding: str, bits: BitWidths, jobs: list
) -> tuple[BitWriter, dict]:
    st = parse_structure(structure)
    reason = st.fits(weight.shape)
    if reason is not None:
        raise ValueError(f"structure does not fit weight shape {tuple(weight.shape)}: {reason}")
    names = ["bitmap", "csr"] + ["group"] * (st.index_group is not None)
    names += ["quota", "quota-rank"] * st.balanced
    if encoding not in names:
        raise unknown_name(f"encoding for structure {st.spec}", encoding, names)
    w4 = weight.detach().cpu().reshape(shape_4d(weight.shape))
    wr = BitWriter()
    if encoding in ("quota", "quota-rank"):
        return wr, _write_quota(wr, float_values(w4), st, encoding, bits.value, jobs)
    codes4, occ4 = value_codes(w4, bits.value), w4 != 0
    if encoding == "bitmap":
        occ = occ4.numpy().reshape(-1)
        wr.write(codes4.numpy().reshape(-1)[occ], bits.value)
        wr.write(occ, 1)
        counts = {"values": int(np.count_nonzero(occ))}
    elif encoding == "csr":
        counts = _write_entries(wr, codes4.reshape(-1, 1), occ4.reshape(-1), "relative", bits)
    else:  # group
        gst = st.index_group
        e = gst.layout(tuple(occ4.shape))[2]
        kept = gst.group_view(occ4).any(-1).reshape(-1)
        counts = _write_entries(wr, gst.group_view(codes4).reshape(-1, e), kept, None, bits)
    return wr, counts


def encode_layers(
    layers: Sequence[tuple[Tensor, str | Structure, str]],
    bits: BitWidths | None = None,
    version: int = VERSION,
    joined: bool = True,
) -> list[dict]:
    """``encode_layer`` of every ``(weight, structure, encoding)``, the same sections; the wide
    quota-rank ranks of all layers are computed together. ``joined=False``: each ``data`` is a
    list of byte strings to write one after another (a file writer need not join them)."""
    bits = check_bits(bits or BitWidths())
    per_layer: list[list] = [[] for _ in layers]  # rank jobs, in layer order
    parts = map_layers(lambda i: _encode(*layers[i], bits, per_layer[i]), range(len(layers)))
    write_ranks_many([job for jobs in per_layer for job in jobs], version)
    return [
        {"data": wr.getvalue() if joined else wr.chunks(), "bits": wr.nbits, "counts": counts}
        for wr, counts in parts
    ]


def encode_layer(
    weight: Tensor,
    structure: str | Structure,
    encoding: str,
    bits: BitWidths | None = None,
    version: int = VERSION,
) -> dict:
    """One layer's section: ``{"data": bytes, "bits": exact bit count, "counts": {...}}``, in
    the rank code of format ``version``."""
    return encode_layers([(weight, structure, encoding)], bits, version)[0]


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


def _quota_positions(rd: BitReader, d: int, g: int, n: int) -> np.ndarray:
    pos = rd.read(d * n, ceil_log2(g)).astype(np.int64).reshape(d, n)
    if (pos >= g).any() or (np.diff(pos, axis=1) <= 0).any():
        raise ValueError("quota positions out of range or not ascending")
    return pos


def _decode_quota(rd: BitReader, st: Structure, shape4, encoding: str, counts, v: int, jobs):
    """Reads the values and, for quota, the positions; quota-rank adds its rank fields to
    ``jobs`` (for ``read_ranks_many``). Returns ``finish(bool selections of every job)``: the
    codes as uint32 / uint16 in ``(K, C, R, S)``."""
    levels = [tuple(int(x) for x in lv) for lv in counts["levels"]]
    _check_levels(levels, st, shape4)  # type: ignore[arg-type]
    widths = [level.layout(shape4)[2] for level in st.quota_levels]  # E per level
    d_last, _, n_last = levels[-1]
    inner = rd.read_codes(d_last * n_last * widths[-1], v)
    if encoding == "quota":
        sel = [_quota_positions(rd, d, g, n) for d, g, n in levels]
    else:
        first = len(jobs)
        jobs.extend((rd, d, g, n) for d, g, n in levels)

    def finish(kept: list[np.ndarray]) -> Tensor:
        nonlocal inner
        picked = sel if encoding == "quota" else kept[first : first + len(levels)]
        # Innermost level first: each scatters its values into the groups the level above kept.
        for (d, g, _), pick, e in reversed(list(zip(levels, picked, widths))):
            view = np.zeros((d * g, e), dtype=inner.dtype)
            # Flat indices (faster than a bool index): from quota's positions or a selection.
            at = np.flatnonzero(pick) if pick.dtype == bool else pick + (np.arange(d) * g)[:, None]
            view[at.reshape(-1)] = inner.reshape(-1, e)
            inner = view.reshape(d, g, e)
        return st.quota_levels[0].from_group_view(torch.from_numpy(inner), shape4)

    return finish


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


Section = tuple  # (data, shape, structure, encoding, counts, dtype, nbits): decode_layer's


def _decode(section: Section, bits: BitWidths, jobs: list):
    """Starts decoding one section; returns ``finish(selections of every rank job)``."""
    data, shape, structure, encoding, counts, dtype, nbits = section
    st, shape4 = parse_structure(structure), shape_4d(shape)
    reason = st.fits(shape)
    if reason is not None:
        raise ValueError(f"structure does not fit shape {tuple(shape)}: {reason}")
    rd, v, numel = BitReader(data, nbits), bits.value, math.prod(shape4)
    if encoding in ("quota", "quota-rank") and st.balanced:
        codes_of_section = _decode_quota(rd, st, shape4, encoding, counts, v, jobs)

        def finish(kept: list[np.ndarray]) -> Tensor:
            codes = codes_of_section(kept)
            _check_end(rd, nbits)
            return _from_value_codes(codes, v, dtype).reshape(tuple(shape))

        return finish
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
    else:
        raise ValueError(f"unknown encoding {encoding!r} for structure {st.spec}")
    _check_end(rd, nbits)
    out = from_codes(codes.reshape(-1), v, dtype).reshape(tuple(shape))
    return lambda kept: out


def decode_layers(
    sections: Sequence[Section], bits: BitWidths | None = None, version: int = VERSION
) -> list[Tensor]:
    """``decode_layer`` of every ``(data, shape, structure, encoding, counts, dtype, nbits)``;
    the wide quota-rank ranks of sections that share ``(G, n)`` are unranked together."""
    bits = check_bits(bits or BitWidths())
    jobs: list = []
    finish = [_decode(section, bits, jobs) for section in sections]
    kept = read_ranks_many(jobs, version, keep=True)
    return map_layers(lambda f: f(kept), finish)


def decode_layer(
    data: bytes,
    shape: list[int] | tuple[int, ...],
    structure: str | Structure,
    encoding: str,
    counts: dict,
    bits: BitWidths | None = None,
    dtype: torch.dtype = torch.float32,
    nbits: int | None = None,
    version: int = VERSION,
) -> Tensor:
    """Inverse of ``encode_layer``; a malformed section raises ValueError or EOFError."""
    section = (data, shape, structure, encoding, counts, dtype, nbits)
    return decode_layers([section], bits, version)[0]


def _check_end(rd: BitReader, nbits: int | None) -> None:
    if rd.pos != rd.nbits and nbits is not None:
        raise ValueError(f"section has {rd.nbits} bits, decoding used {rd.pos}")


def _from_value_codes(codes: Tensor, value_bits: int, dtype: torch.dtype) -> Tensor:
    """uint32 / uint16 codes (``BitReader.read_codes``) -> weights in ``dtype``."""
    _, _, _, np_float = VALUE_BITS[value_bits]
    return torch.from_numpy(codes.contiguous().numpy().view(np_float)).to(dtype)
