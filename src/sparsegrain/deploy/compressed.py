"""Compressed model files: each sparse layer bit-packed in the encoding the storage analysis chose
for it (``layer_storage(...)["best"]``), exactly as ``analysis/storage.py`` counts it; every other
tensor (BN, biases, layers left dense) raw. Reading gives back the dense state_dict; nothing in
the file is executable (no pickle): a zlib-compressed JSON header and packed bits.

File layout (integers little-endian)::

    offset 0       8 bytes   magic b"\\x89SGC\\r\\n\\x1a\\n"
    offset 8       4 bytes   H, the length of the compressed header
    offset 12      H bytes   zlib-compressed UTF-8 JSON header
    offset 12 + H            payload: one byte-aligned section per tensor, in state_dict order

Header: ``format`` ("sparsegrain-compressed"), ``version``, ``byteorder``, ``bits`` (value and
index widths), ``payload`` (``bytes``, ``crc32``) and ``tensors``: per tensor ``name``,
``shape``, ``dtype``, ``offset`` (from the payload start) and ``bytes``; a sparse one adds
``layer``, ``structure``, ``encoding``, ``bits`` (exact bits of its section before padding) and
``counts`` (what decoding needs: entry and filler counts, group addressing, quota levels). These
are the per-layer headers that storage.py does not count; they live in the JSON header.

A sparse section holds the value codes first (so they stay byte aligned), then the index bits,
fields most significant bit first, zero padded to a whole byte (at most 7 bits per section). With
``v`` value bits, ``b`` index bits and groups in the structure's ``group_view`` order:

- ``bitmap``: the nnz values in position order, then N mask bits.
- ``csr``: the values of all entries (fillers hold 0), then one ``b``-bit gap per entry.
- ``group``: ``E`` values per entry (kept groups, and fillers of zeros when addressing is
  relative), then one ``b``-bit gap per entry (relative) or one bit per group (bitmap).
- ``quota``: ``D*n*E`` values (domain by domain, positions ascending), then ``D*n`` positions
  of ``ceil(log2 G)`` bits; a domain holding fewer than ``n`` groups is padded with its first
  empty groups (stored zeros). Combined: kernel positions (level 1), then element positions
  inside the ``K*m`` selected kernels (level 2).
- ``quota-rank``: the same values, then per domain the colexicographic rank of its sorted
  positions ``c_0 < c_1 < ...``, ``sum_i C(c_i, i + 1)``, in ``ceil(log2 C(G, n))`` bits.

Values: ``bits.value = 32`` stores the float32 bit pattern (exact for float32, float16 and
bfloat16 weights); ``16`` stores float16, which is lossy (rounding to 11 significant bits,
overflow beyond 65504 to inf, tiny values to 0). Zeros come back as +0.0: the sign of a zero is
not stored (storage.py counts no bit for it; a finalized model holds -0.0 wherever a negative
weight was multiplied by a 0 mask). Every other value comes back with its exact bits.
Raw tensors: their bytes in their own dtype (float32 for BN, biases and dense layers).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..analysis.storage import BitWidths, ceil_log2, encode, layer_storage
from ..core.errors import ConfigError, unknown_name
from ..core.io import atomic_write
from ..structures import Combined, Kernel, KernelQuota, Structure, parse_structure, shape_4d

MAGIC = b"\x89SGC\r\n\x1a\n"
FORMAT = "sparsegrain-compressed"
VERSION = 1
# value bits -> (float dtype, same-size int dtype, numpy code dtype, numpy float dtype)
VALUE_BITS = {
    32: (torch.float32, torch.int32, np.uint32, np.float32),
    16: (torch.float16, torch.int16, np.uint16, np.float16),
}
DTYPES = {
    n: getattr(torch, n)
    for n in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8")
} | {"uint8": torch.uint8, "bool": torch.bool}
SPARSE_DTYPES = ("float32", "float16", "bfloat16")
_CHUNK = 1 << 16  # fields per numpy pass in the bit writer/reader (bounds temporary memory)
_MAX_HEADER = 256 << 20
_RANK_TABLE_LIMIT = 1 << 22  # binomial-table entries for vectorized ranks; Python ints above


# -- bits -----------------------------------------------------------------------------------------


class BitWriter:
    """Fixed-width unsigned fields, most significant bit first, packed into zero-padded bytes."""

    def __init__(self) -> None:
        self._bits: list[np.ndarray] = []
        self.nbits = 0

    def write(self, values: Any, width: int) -> None:
        """Every entry of ``values`` (integers in ``[0, 2**width)``) in ``width`` bits (0..64)."""
        v = np.asarray(values, dtype=np.uint64).reshape(-1)
        if not 0 <= width <= 64:
            raise ValueError(f"field width must be in 0..64, got {width}")
        if width < 64 and v.size and (v >> np.uint64(width)).any():
            raise ValueError(f"a value does not fit in {width} bits")
        if width == 0:
            return
        for i in range(0, v.size, _CHUNK):
            octets = v[i : i + _CHUNK].astype(">u8").view(np.uint8).reshape(-1, 8)
            self._bits.append(np.unpackbits(octets, axis=1)[:, 64 - width :].reshape(-1))
        self.nbits += v.size * width

    def write_int(self, value: int, width: int) -> None:
        """One Python integer in ``[0, 2**width)`` in ``width`` bits (any width)."""
        if value < 0 or value >> width:
            raise ValueError(f"{value} does not fit in {width} bits")
        if width:
            raw = np.frombuffer(value.to_bytes((width + 7) // 8, "big"), dtype=np.uint8)
            self._bits.append(np.unpackbits(raw)[-width:])
            self.nbits += width

    def getvalue(self) -> bytes:
        return np.packbits(np.concatenate(self._bits)).tobytes() if self._bits else b""


class BitReader:
    """Reads what ``BitWriter`` wrote; reading past ``nbits`` raises EOFError."""

    def __init__(self, data: bytes, nbits: int | None = None) -> None:
        self._buf = np.frombuffer(data, dtype=np.uint8)
        self.nbits = len(data) * 8 if nbits is None else nbits
        if self.nbits > len(data) * 8:
            raise EOFError(f"{self.nbits} bits announced, {len(data) * 8} present")
        self.pos = 0

    def _take(self, n: int) -> np.ndarray:
        if self.pos + n > self.nbits:
            raise EOFError(f"needs {n} bits at bit {self.pos}, {self.nbits - self.pos} left")
        start, off = divmod(self.pos, 8)
        bits = np.unpackbits(self._buf[start : -(-(self.pos + n) // 8)])[off : off + n]
        self.pos += n
        return bits

    def read(self, count: int, width: int) -> np.ndarray:
        """``count`` fields of ``width`` bits (0..64) as uint64."""
        out = np.zeros(count, dtype=np.uint64)
        if width == 0:
            return out
        for i in range(0, count, _CHUNK):
            k = min(_CHUNK, count - i)
            full = np.zeros((k, 64), dtype=np.uint8)
            full[:, 64 - width :] = self._take(k * width).reshape(k, width)
            out[i : i + k] = np.packbits(full, axis=1).view(">u8").reshape(-1)
        return out

    def read_int(self, width: int) -> int:
        """One field of any width as a Python integer."""
        if width == 0:
            return 0
        bits = np.concatenate([np.zeros((-width) % 8, np.uint8), self._take(width)])
        return int.from_bytes(np.packbits(bits).tobytes(), "big")


# -- values and positions -------------------------------------------------------------------------


def _value_codes(w: Tensor, value_bits: int) -> Tensor:
    """int64 codes of ``w`` (same shape): the float32 or float16 bit pattern; zeros as +0.0."""
    fdt, idt, np_dt, _ = VALUE_BITS[value_bits]
    w = torch.where(w == 0, torch.zeros_like(w), w).to(fdt)
    return w.view(idt).to(torch.int64) & np.iinfo(np_dt).max


def _from_codes(codes: Tensor, value_bits: int, dtype: torch.dtype) -> Tensor:
    _, _, np_dt, np_float = VALUE_BITS[value_bits]
    arr = codes.numpy().astype(np_dt).view(np_float)
    return torch.from_numpy(arr.copy()).to(dtype)


def _relative(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gap codes by storage.py's csr rule (fillers of gap ``L = 2**b - 1`` bridge longer gaps)
    and the entry index of every real position."""
    cap = (1 << index_bits) - 1
    gaps = np.diff(positions.astype(np.int64), prepend=0)
    fill = np.maximum(0, (gaps - 1) // cap)
    real = np.cumsum(fill + 1) - 1
    codes = np.full(int(real[-1]) + 1 if real.size else 0, cap, dtype=np.int64)
    codes[real] = gaps - fill * cap
    return codes, real


def _positions(gaps: np.ndarray, limit: int) -> np.ndarray:
    pos = np.cumsum(gaps.astype(np.int64))
    if pos.size and (pos[-1] >= limit or (gaps[1:] == 0).any()):
        raise ValueError(f"relative indices leave the {limit} positions or repeat one")
    return pos


def _select(kept: Tensor, n: int) -> Tensor:
    """``(D, n)`` ascending positions per domain: the kept groups, then the first empty ones."""
    order = torch.sort((~kept).to(torch.uint8), dim=1, stable=True).indices[:, :n]
    return order.sort(dim=1).values


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


def _write_ranks(wr: BitWriter, pos: Tensor, g: int, n: int) -> None:
    width = ceil_log2(math.comb(g, n))
    table = _comb_table(g, n)
    if table is not None:
        wr.write(table[pos.numpy(), np.arange(1, n + 1)].sum(1, dtype=np.uint64), width)
        return
    for row in pos.tolist():
        wr.write_int(sum(math.comb(c, i + 1) for i, c in enumerate(row)), width)


def _read_ranks(rd: BitReader, d: int, g: int, n: int) -> Tensor:
    total, width = math.comb(g, n), ceil_log2(math.comb(g, n))
    table = _comb_table(g, n)
    if table is not None:
        r = rd.read(d, width)
        if (r >= np.uint64(total)).any():
            raise ValueError(f"a rank is >= C({g}, {n})")
        out = np.zeros((d, n), dtype=np.int64)
        for i in range(n - 1, -1, -1):
            out[:, i] = np.searchsorted(table[:, i + 1], r, side="right") - 1
            r = r - table[out[:, i], i + 1]
        return torch.from_numpy(out)
    rows = []
    for _ in range(d):
        r, hi, row = rd.read_int(width), g - 1, [0] * n
        if r >= total:
            raise ValueError(f"a rank is >= C({g}, {n})")
        for i in range(n - 1, -1, -1):
            lo = i  # largest c in [i, hi] with C(c, i + 1) <= r
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if math.comb(mid, i + 1) <= r else (lo, mid - 1)
            row[i], r, hi = lo, r - math.comb(lo, i + 1), lo - 1
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64).reshape(d, n)


# -- encodings ------------------------------------------------------------------------------------


def _group_structure(st: Structure) -> Structure:
    return Kernel() if isinstance(st, (KernelQuota, Combined)) else st


def _quota_select(codes4: Tensor, occ4: Tensor, st: Structure):
    """Levels ``[(D, G, n)]``, the positions of each level, and the ``(D, n, E)`` value codes."""
    if isinstance(st, Combined):
        k, c, r, s = occ4.shape
        occ_k, codes_k = occ4.reshape(k, c, r * s), codes4.reshape(k, c, r * s)
        m = int(occ_k.any(-1).sum(1).max())
        sel1 = _select(occ_k.any(-1), m)
        idx = sel1[..., None].expand(k, m, r * s)
        occ2 = occ_k.gather(1, idx).reshape(k * m, r * s)
        n = int(occ2.sum(1).max()) if occ2.numel() else 0
        sel2 = _select(occ2, n)
        vals = codes_k.gather(1, idx).reshape(k * m, r * s).gather(1, sel2)[..., None]
        return [(k, c, m), (k * m, r * s, n)], [sel1, sel2], vals
    occ_v, codes_v = st.group_view(occ4), st.group_view(codes4)
    kept = occ_v.any(-1)
    n = int(kept.sum(1).max())
    sel = _select(kept, n)
    vals = codes_v.gather(1, sel[..., None].expand(-1, -1, occ_v.shape[-1]))
    return [(*kept.shape, n)], [sel], vals


def encode_layer(
    weight: Tensor, structure: str | Structure, encoding: str, bits: BitWidths | None = None
) -> dict:
    """One layer's section: ``{"data": bytes, "bits": exact bit count, "counts": {...}}``."""
    bits = _check_bits(bits or BitWidths())
    st = parse_structure(structure)
    costs = encode(weight, st, bits)  # also checks that the structure fits
    if encoding not in costs:
        raise unknown_name(f"encoding for structure {st.spec}", encoding, costs)
    w4 = weight.detach().cpu().reshape(shape_4d(weight.shape))
    codes4, occ4 = _value_codes(w4, bits.value), w4 != 0
    wr, v, counts = BitWriter(), bits.value, {}
    if encoding == "bitmap":
        wr.write(codes4[occ4].numpy(), v)
        wr.write(occ4.reshape(-1).numpy(), 1)
        counts = {"values": int(occ4.sum())}
    elif encoding in ("csr", "group"):
        gst = st if encoding == "csr" else _group_structure(st)
        e = 1 if encoding == "csr" else gst.layout(tuple(occ4.shape))[2]
        kept = occ4.reshape(-1) if encoding == "csr" else gst.group_view(occ4).any(-1).reshape(-1)
        kept_codes = (codes4 if encoding == "csr" else gst.group_view(codes4)).reshape(-1, e)[kept]
        addressing = "relative" if encoding == "csr" else costs["group"].addressing
        if addressing == "relative":
            gaps, real = _relative(kept.nonzero().reshape(-1).numpy(), bits.index)
            vals = np.zeros((gaps.size, e), dtype=np.int64)
            vals[real] = kept_codes.numpy()
            wr.write(vals, v)
            wr.write(gaps, bits.index)
        else:
            vals = kept_codes.numpy()
            wr.write(vals, v)
            wr.write(kept.numpy(), 1)
        counts = {"entries": len(vals), "fillers": len(vals) - len(kept_codes)}
        counts["addressing"] = addressing
    else:
        levels, sel, vals = _quota_select(codes4, occ4, st)
        wr.write(vals.numpy(), v)
        for (_, g, n), pos in zip(levels, sel):
            if encoding == "quota":
                wr.write(pos.numpy(), ceil_log2(g))
            else:
                _write_ranks(wr, pos, g, n)
        counts = {"levels": [list(lv) for lv in levels]}
    return {"data": wr.getvalue(), "bits": wr.nbits, "counts": counts}


def _decode_quota(rd: BitReader, st: Structure, shape4, encoding, counts, v) -> Tensor:
    levels = [tuple(int(x) for x in lv) for lv in counts["levels"]]
    k, c, r, s = shape4
    if isinstance(st, Combined):
        (k1, c1, m), (d2, rs, n) = levels
        ok, e = (k1, c1, d2, rs) == (k, c, k * m, r * s) and m <= c and n <= rs, 1
    else:
        (d, g, n), (d0, g0, e) = levels[0], st.layout(shape4)
        ok = len(levels) == 1 and (d, g) == (d0, g0) and n <= g
    if not ok:
        raise ValueError(f"quota levels {levels} do not match shape {shape4}")
    d_last, _, n_last = levels[-1]
    vals = torch.from_numpy(rd.read(d_last * n_last * e, v).astype(np.int64))
    sel = []
    for d, g, n in levels:
        if encoding == "quota":
            pos = torch.from_numpy(rd.read(d * n, ceil_log2(g)).astype(np.int64)).reshape(d, n)
            if (pos >= g).any() or (pos.diff(dim=1) <= 0).any():
                raise ValueError("quota positions out of range or not ascending")
        else:
            pos = _read_ranks(rd, d, g, n)
        sel.append(pos)
    if isinstance(st, Combined):
        kernels = torch.zeros(k * m, r * s, dtype=torch.int64).scatter_(
            1, sel[1], vals.reshape(k * m, n_last)
        )
        out = torch.zeros(k, c, r * s, dtype=torch.int64)
        out.scatter_(1, sel[0][..., None].expand(k, m, r * s), kernels.reshape(k, m, r * s))
        return out.reshape(shape4)
    d, g, n = levels[0]
    view = torch.zeros(d, g, e, dtype=torch.int64)
    view.scatter_(1, sel[0][..., None].expand(d, n, e), vals.reshape(d, n, e))
    return st.from_group_view(view, shape4)


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
    bits = _check_bits(bits or BitWidths())
    st, shape4 = parse_structure(structure), shape_4d(shape)
    reason = st.fits(shape)
    if reason is not None:
        raise ValueError(f"structure does not fit shape {tuple(shape)}: {reason}")
    rd, v, numel = BitReader(data, nbits), bits.value, math.prod(shape4)
    if encoding == "bitmap":
        vals = rd.read(int(counts["values"]), v)
        mask = torch.from_numpy(rd.read(numel, 1).astype(bool))
        if int(mask.sum()) != vals.size:
            raise ValueError("bitmap and value count disagree")
        codes = torch.zeros(numel, dtype=torch.int64)
        codes[mask] = torch.from_numpy(vals.astype(np.int64))
    elif encoding in ("csr", "group"):
        gst = st if encoding == "csr" else _group_structure(st)
        d, g, e = (1, numel, 1) if encoding == "csr" else gst.layout(shape4)
        entries = int(counts["entries"])
        vals = torch.from_numpy(rd.read(entries * e, v).astype(np.int64)).reshape(entries, e)
        view = torch.zeros(d * g, e, dtype=torch.int64)
        if counts.get("addressing", "relative") == "relative":
            view[torch.from_numpy(_positions(rd.read(entries, bits.index), d * g))] = vals
        else:
            kept = torch.from_numpy(rd.read(d * g, 1).astype(bool))
            if int(kept.sum()) != entries:
                raise ValueError("group bitmap and entry count disagree")
            view[kept] = vals
        codes = view if encoding == "csr" else gst.from_group_view(view.reshape(d, g, e), shape4)
    elif encoding in ("quota", "quota-rank") and st.balanced:
        codes = _decode_quota(rd, st, shape4, encoding, counts, v)
    else:
        raise ValueError(f"unknown encoding {encoding!r} for structure {st.spec}")
    if rd.pos != rd.nbits and nbits is not None:
        raise ValueError(f"section has {rd.nbits} bits, decoding used {rd.pos}")
    return _from_codes(codes.reshape(-1), v, dtype).reshape(tuple(shape))


# -- files ----------------------------------------------------------------------------------------


def _check_bits(bits: BitWidths) -> BitWidths:
    if not isinstance(bits, BitWidths):
        raise ValueError(f"bits must be a BitWidths, got {type(bits).__name__}")
    if bits.value not in VALUE_BITS:
        raise ValueError(
            f"bits.value must be 32 (float32, exact) or 16 (float16, lossy), got {bits.value}"
        )
    if bits.index > 62:
        raise ValueError(f"bits.index must be at most 62, got {bits.index}")
    return bits


def _state_dict(obj: nn.Module | dict[str, Tensor]) -> dict[str, Tensor]:
    sd = obj.state_dict() if isinstance(obj, nn.Module) else obj
    if not isinstance(sd, dict):
        raise ValueError(f"expected an nn.Module or a state_dict, got {type(obj).__name__}")
    bad = [k for k, t in sd.items() if not isinstance(t, Tensor) or t.is_sparse or t.is_quantized]
    if bad:
        raise ValueError(f"state_dict entries that are not dense tensors: {', '.join(bad[:5])}")
    masked = [k for k in sd if ".parametrizations." in k]
    if masked:
        raise ValueError(
            f"the model still has masks attached ({masked[0]}, ...): call the handle's "
            "finalize() or sparsegrain.finalize_(model) before writing a compressed file"
        )
    odd = [f"{k} ({t.dtype})" for k, t in sd.items() if str(t.dtype)[6:] not in DTYPES]
    if odd:
        raise ValueError(f"unsupported dtypes: {', '.join(odd[:5])}; allowed: {', '.join(DTYPES)}")
    return {k: t.detach().cpu() for k, t in sd.items()}


def _sparse_keys(sd: dict[str, Tensor], structures: dict) -> dict[str, tuple[str, str]]:
    """state_dict key -> (layer name, structure spec) for the layers given a structure."""
    out = {}
    for name, spec in structures.items():
        key = f"{name}.weight" if f"{name}.weight" in sd else name
        if key not in sd:
            layers = [k[: -len(".weight")] for k in sd if k.endswith(".weight")]
            raise unknown_name("layer in structures", name, layers)
        if spec is None or spec == "dense":
            continue
        dtype = str(sd[key].dtype)[6:]
        if dtype not in SPARSE_DTYPES:
            raise ValueError(
                f"layer '{name}': a sparse weight must be one of {', '.join(SPARSE_DTYPES)}, "
                f"got {dtype}"
            )
        out[key] = (name, spec)
    return out


def _raw_bytes(t: Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _from_raw(data: bytes, shape: list[int], dtype: torch.dtype) -> Tensor:
    if math.prod(shape) * torch.empty((), dtype=dtype).element_size() != len(data):
        raise ValueError(f"{len(data)} bytes for shape {shape} of {dtype}")
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)


def write_compressed(
    model_or_state_dict: nn.Module | dict[str, Tensor],
    structures: dict[str, str | Structure | None],
    path: str | Path,
    bits: BitWidths | None = None,
) -> dict:
    """Write the compressed file (module doc) atomically; return what was written vs predicted.

    ``structures`` maps a layer name (``"layer1.0.conv1"``, or a state_dict key) to its structure
    spec, or None for a layer left dense; tensors it does not name are stored raw. Each sparse
    layer uses ``layer_storage(weight, structure, bits)["best"]``. The result: ``layers`` (per
    sparse layer ``name``, ``structure``, ``encoding``, ``predicted_bits`` from storage.py,
    ``written_bits``, ``bytes``), ``raw_bits``, ``file_bytes``, ``header_bytes`` (magic, length
    and compressed header), ``payload_bytes``, ``predicted_bytes`` (sparse best bits + raw bits,
    rounded up to bytes, + header bytes) and ``ratio`` (``file_bytes / predicted_bytes``), and
    ``ratio_to_storage`` (``file_bytes`` over the prediction without the header).
    """
    bits = _check_bits(bits or BitWidths())
    sd = _state_dict(model_or_state_dict)
    sparse = _sparse_keys(sd, structures)
    entries, sections, rows, offset, raw_bits = [], [], [], 0, 0
    for key, t in sd.items():
        entry: dict[str, Any] = {"name": key, "shape": list(t.shape), "dtype": str(t.dtype)[6:]}
        if key in sparse:
            layer, spec = sparse[key]
            try:
                row = layer_storage(t, spec, bits)
            except ValueError as e:
                raise ValueError(f"layer '{layer}': {e}") from None
            out = encode_layer(t, spec, row["best"], bits)
            data = out["data"]
            entry.update(layer=layer, structure=row["structure"], encoding=row["best"])
            entry.update(bits=out["bits"], counts=out["counts"])
            rows.append({"name": layer, "structure": row["structure"], "encoding": row["best"]})
            rows[-1].update(predicted_bits=row["best_bits"], written_bits=out["bits"])
            rows[-1]["bytes"] = len(data)
        else:
            data = _raw_bytes(t)
            raw_bits += 8 * len(data)
        entry.update(offset=offset, bytes=len(data))
        offset += len(data)
        entries.append(entry)
        sections.append(data)
    payload = b"".join(sections)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "byteorder": "little",
        "bits": {"value": bits.value, "index": bits.index},
        "payload": {"bytes": len(payload), "crc32": zlib.crc32(payload)},
        "tensors": entries,
    }
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    blob = MAGIC + struct.pack("<I", len(head)) + head + payload
    atomic_write(path, blob)
    predicted = -(-(sum(r["predicted_bits"] for r in rows) + raw_bits) // 8)
    header_bytes = len(blob) - len(payload)
    return {
        "path": str(path),
        "bits": {"value": bits.value, "index": bits.index},
        "layers": rows,
        "raw_bits": raw_bits,
        "file_bytes": len(blob),
        "header_bytes": header_bytes,
        "payload_bytes": len(payload),
        "predicted_bytes": predicted + header_bytes,
        "ratio": len(blob) / (predicted + header_bytes),
        "ratio_to_storage": len(blob) / predicted if predicted else math.inf,
    }


def _read_header(path: Path, blob: bytes) -> tuple[dict, bytes]:
    bad = f"{path} is not a sparsegrain compressed file"
    if len(blob) < 12 or blob[:8] != MAGIC:
        raise ConfigError(f"{bad} (no '{FORMAT}' signature)")
    (size,) = struct.unpack("<I", blob[8:12])
    if 12 + size > len(blob):
        raise ConfigError(f"compressed file {path} is truncated (header cut short)")
    try:
        inflate = zlib.decompressobj()
        text = inflate.decompress(blob[12 : 12 + size], _MAX_HEADER)
        if inflate.unconsumed_tail or not inflate.eof:
            raise ValueError("header does not inflate to a complete record")
        header = json.loads(text)
        if header["format"] != FORMAT:
            raise ValueError(f"format {header['format']!r}")
        version = header["version"]
    except (zlib.error, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"compressed file {path} has a corrupt header ({e})") from None
    if version != VERSION:
        raise ConfigError(f"compressed file {path} has version {version}; this reads {VERSION}")
    return header, blob[12 + size :]


def read_compressed(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """The dense state_dict of a file ``write_compressed`` wrote, and its header as ``meta``.

    Values come back bit-exact at ``bits.value = 32`` (zeros as +0.0); a missing, truncated,
    corrupt or foreign file raises ConfigError naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"compressed file not found: {path}")
    header, payload = _read_header(path, path.read_bytes())
    try:
        want, crc = int(header["payload"]["bytes"]), int(header["payload"]["crc32"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"compressed file {path} has a corrupt header (payload)") from None
    if len(payload) != want:
        raise ConfigError(
            f"compressed file {path} is truncated or padded: payload of {len(payload)} bytes, "
            f"header says {want}"
        )
    if zlib.crc32(payload) != crc:
        raise ConfigError(f"compressed file {path} is corrupt (payload checksum mismatch)")
    try:
        bits = _check_bits(BitWidths(value=header["bits"]["value"], index=header["bits"]["index"]))
        state = {t["name"]: _read_tensor(t, payload, bits) for t in header["tensors"]}
    except (ValueError, EOFError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise ConfigError(f"compressed file {path} is corrupt ({type(e).__name__}: {e})") from None
    return state, header


def _read_tensor(entry: dict, payload: bytes, bits: BitWidths) -> Tensor:
    start, size = int(entry["offset"]), int(entry["bytes"])
    if start < 0 or size < 0 or start + size > len(payload):
        raise ValueError(f"tensor {entry['name']} lies outside the payload")
    data, shape = payload[start : start + size], [int(d) for d in entry["shape"]]
    if entry["dtype"] not in DTYPES:
        raise ValueError(f"tensor {entry['name']}: unknown dtype {entry['dtype']!r}")
    dtype = DTYPES[entry["dtype"]]
    if "encoding" not in entry:
        return _from_raw(data, shape, dtype)
    nbits = int(entry["bits"])
    if -(-nbits // 8) != size:
        raise ValueError(f"tensor {entry['name']}: {nbits} bits in {size} bytes")
    return decode_layer(
        data, shape, entry["structure"], entry["encoding"], entry["counts"], bits, dtype, nbits
    )
