"""Bits of the compressed format: fixed-width fields, value codes, relative gaps, subset ranks.

Fields are unsigned, most significant bit first, packed into zero-padded bytes. A value is its
float32 or float16 bit pattern (zeros as +0.0); gaps follow storage.py's csr rule; a subset of
``n`` of ``G`` positions ``c_0 < c_1 < ...`` is stored as its colexicographic rank
``sum_i C(c_i, i + 1)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...analysis.storage import BitWidths, ceil_log2

# value bits -> (float dtype, same-size int dtype, numpy code dtype, numpy float dtype)
VALUE_BITS = {
    32: (torch.float32, torch.int32, np.uint32, np.float32),
    16: (torch.float16, torch.int16, np.uint16, np.float16),
}
_CHUNK = 1 << 16  # fields per numpy pass in the bit writer/reader (bounds temporary memory)
_RANK_TABLE_LIMIT = 1 << 22  # binomial-table entries for vectorized ranks; Python ints above


def check_bits(bits: BitWidths) -> BitWidths:
    """``bits`` if the format can store it (value 32 or 16, index at most 62), else ValueError."""
    if not isinstance(bits, BitWidths):
        raise ValueError(f"bits must be a BitWidths, got {type(bits).__name__}")
    if bits.value not in VALUE_BITS:
        raise ValueError(
            f"bits.value must be 32 (float32, exact) or 16 (float16, lossy), got {bits.value}"
        )
    if bits.index > 62:
        raise ValueError(f"bits.index must be at most 62, got {bits.index}")
    return bits


# -- fields ---------------------------------------------------------------------------------------


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


def value_codes(w: Tensor, value_bits: int) -> Tensor:
    """int64 codes of ``w`` (same shape): the float32 or float16 bit pattern; zeros as +0.0."""
    fdt, idt, np_dt, _ = VALUE_BITS[value_bits]
    w = torch.where(w == 0, torch.zeros_like(w), w).to(fdt)
    return w.view(idt).to(torch.int64) & np.iinfo(np_dt).max


def from_codes(codes: Tensor, value_bits: int, dtype: torch.dtype) -> Tensor:
    """Inverse of ``value_codes``, in ``dtype``."""
    _, _, np_dt, np_float = VALUE_BITS[value_bits]
    arr = codes.numpy().astype(np_dt).view(np_float)
    return torch.from_numpy(arr.copy()).to(dtype)


def relative_gaps(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gap codes by storage.py's csr rule (fillers of gap ``L = 2**b - 1`` bridge longer gaps)
    and the entry index of every real position."""
    cap = (1 << index_bits) - 1
    gaps = np.diff(positions.astype(np.int64), prepend=0)
    fill = np.maximum(0, (gaps - 1) // cap)
    real = np.cumsum(fill + 1) - 1
    codes = np.full(int(real[-1]) + 1 if real.size else 0, cap, dtype=np.int64)
    codes[real] = gaps - fill * cap
    return codes, real


def gap_positions(gaps: np.ndarray, limit: int) -> np.ndarray:
    """Positions from the gaps of every entry (fillers included); ValueError when they leave
    ``[0, limit)`` or repeat."""
    pos = np.cumsum(gaps.astype(np.int64))
    if pos.size and (pos[-1] >= limit or (gaps[1:] == 0).any()):
        raise ValueError(f"relative indices leave the {limit} positions or repeat one")
    return pos


# -- subset ranks ---------------------------------------------------------------------------------


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


def write_ranks(wr: BitWriter, pos: Tensor, g: int, n: int) -> None:
    """The rank of every row of ascending positions ``pos (D, n)`` in ``ceil(log2 C(g, n))``
    bits."""
    width = ceil_log2(math.comb(g, n))
    table = _comb_table(g, n)
    if table is not None:
        wr.write(table[pos.numpy(), np.arange(1, n + 1)].sum(1, dtype=np.uint64), width)
        return
    for row in pos.tolist():
        wr.write_int(sum(math.comb(c, i + 1) for i, c in enumerate(row)), width)


def read_ranks(rd: BitReader, d: int, g: int, n: int) -> Tensor:
    """Inverse of ``write_ranks``: ``(d, n)`` ascending positions; ValueError on a bad rank."""
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
