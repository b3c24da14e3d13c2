"""Bits of the compressed format: fixed-width fields, value codes, relative gaps.

Fields are unsigned, most significant bit first, packed into zero-padded bytes. A value is its
float32 or float16 bit pattern (zeros as +0.0); gaps follow storage.py's csr rule. The subset
ranks of ``quota-rank`` are in ``ranks.py``.

Every path is linear in the fields: fields go through numpy in chunks, and value codes at a byte
boundary (every section opens with its values) are copied as big-endian bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...analysis.storage import BitWidths

# value bits -> (float dtype, same-size int dtype, numpy code dtype, numpy float dtype)
VALUE_BITS = {
    32: (torch.float32, torch.int32, np.uint32, np.float32),
    16: (torch.float16, torch.int16, np.uint16, np.float16),
}
_CODE_DTYPES = {16: np.dtype(np.uint16), 32: np.dtype(np.uint32)}  # value codes copied as bytes
_CHUNK = 1 << 16  # fields per numpy pass in the bit writer/reader (bounds temporary memory)


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


def _field_bits(v: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` low bits of every uint64 in ``v``, most significant first, as 0/1 uint8."""
    if width == 1:
        return v.astype(np.uint8)
    octets = v.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - (width + 7) // 8 :]
    return np.unpackbits(octets, axis=1)[:, (-width) % 8 :].reshape(-1)


def _field_values(bits: np.ndarray, width: int) -> np.ndarray:
    """Inverse of ``_field_bits``: ``(k * width,)`` bits -> ``k`` uint64 fields."""
    if width == 1:
        return bits.astype(np.uint64)
    k, nb = bits.size // width, (width + 7) // 8
    full = np.zeros((k, 8 * nb), dtype=np.uint8)
    full[:, 8 * nb - width :] = bits.reshape(k, width)
    octets = np.zeros((k, 8), dtype=np.uint8)
    octets[:, 8 - nb :] = np.packbits(full, axis=1)
    return octets.view(">u8").reshape(-1).astype(np.uint64)


class BitWriter:
    """Fixed-width unsigned fields, most significant bit first, packed into zero-padded bytes.

    Whole bytes are packed as they come; at most 7 bits wait for the next field. A field of 8, 16,
    24 ... bits written at a byte boundary (the value codes that open every section) is copied as
    bytes without going through single bits.
    """

    def __init__(self) -> None:
        self._bytes: list[bytes] = []
        self._tail = np.zeros(0, dtype=np.uint8)  # the bits after the last whole byte (< 8)
        self.nbits = 0

    def _push_bits(self, bits: np.ndarray) -> None:
        if self._tail.size:
            bits = np.concatenate([self._tail, bits])
        whole = bits.size - bits.size % 8
        self._bytes.append(np.packbits(bits[:whole]).tobytes())
        self._tail = bits[whole:]

    def write(self, values: Any, width: int) -> None:
        """Every entry of ``values`` (integers in ``[0, 2**width)``) in ``width`` bits (0..64)."""
        codes = isinstance(values, np.ndarray) and values.dtype == _CODE_DTYPES.get(width)
        if codes and not self._tail.size:  # value codes at a byte boundary: big-endian bytes
            self._bytes.append(values.astype(values.dtype.newbyteorder(">")).tobytes())
            self.nbits += values.size * width
            return
        v = np.asarray(values, dtype=np.uint64).reshape(-1)
        if not 0 <= width <= 64:
            raise ValueError(f"field width must be in 0..64, got {width}")
        if width < 64 and v.size and (v >> np.uint64(width)).any():
            raise ValueError(f"a value does not fit in {width} bits")
        if width == 0 or v.size == 0:
            return
        for i in range(0, v.size, _CHUNK):
            part = v[i : i + _CHUNK]
            if width % 8 == 0 and not self._tail.size:
                octets = part.astype(">u8").view(np.uint8).reshape(-1, 8)
                self._bytes.append(octets[:, 8 - width // 8 :].tobytes())
            else:
                self._push_bits(_field_bits(part, width))
        self.nbits += v.size * width

    def write_bits(self, bits: np.ndarray) -> None:
        """Single bits (0/1 integers), in order."""
        bits = np.asarray(bits, dtype=np.uint8).reshape(-1)
        if bits.size:
            self._push_bits(bits)
            self.nbits += bits.size

    def write_ints(self, values: Sequence[int], width: int) -> None:
        """Python integers in ``[0, 2**width)``, each in ``width`` bits (any width)."""
        if any(x < 0 or x >> width for x in values):
            raise ValueError(f"a value does not fit in {width} bits")
        if width == 0 or not values:
            return
        nb = (width + 7) // 8
        raw = np.frombuffer(b"".join(x.to_bytes(nb, "big") for x in values), dtype=np.uint8)
        self._push_bits(np.unpackbits(raw.reshape(-1, nb), axis=1)[:, 8 * nb - width :].ravel())
        self.nbits += len(values) * width

    def write_words(self, words: np.ndarray, width: int) -> None:
        """Numbers below ``2**width`` given as rows of little-endian uint64 words (at least
        ``ceil(width / 64)`` per row), each in ``width`` bits (65 or more): shifted into place
        word by word, without single bits."""
        nw = -(-width // 64)
        if width <= 64 or words.ndim != 2 or words.shape[1] < nw:
            raise ValueError(f"write_words takes rows of {nw} words for width {width} (> 64)")
        d = words.shape[0]
        top = np.uint64(width - 64 * (nw - 1))
        if d and ((words[:, nw:] != 0).any() or (words[:, nw - 1] >> top).any()):
            raise ValueError(f"a value does not fit in {width} bits")
        if d == 0:
            return
        be = np.zeros((d, nw + 1), dtype=np.uint64)
        be[:, :nw] = words[:, nw - 1 :: -1]  # most significant word first
        u = np.uint64(64 * nw - width)  # the field's first bit to bit 63 of word 0
        aligned = (be[:, :nw] << u) | (be[:, 1:] >> np.uint64(64) - u)
        lead = self._tail.size
        start = lead + width * np.arange(d, dtype=np.int64)
        s = (start % 64).astype(np.uint64)[:, None]
        placed = np.zeros((d, nw + 1), dtype=np.uint64)
        placed[:, :nw] = aligned >> s
        placed[:, 1:] |= aligned << (np.uint64(64) - s)  # a shift by 64 gives 0
        total = lead + d * width
        out = np.zeros(-(-total // 64) + 1, dtype=np.uint64)
        if lead:
            tail = np.packbits(self._tail)[0]
            out[0] = np.uint64(int(tail) << 56)
        at = (start // 64)[:, None] + np.arange(nw + 1)
        for r in range(3):  # fields three apart never share a word (width > 64)
            out[at[r::3]] |= placed[r::3]
        raw = out.astype(">u8").tobytes()[: -(-total // 8)]
        whole = total // 8
        self._bytes.append(raw[:whole])
        self._tail = np.unpackbits(np.frombuffer(raw[whole:], dtype=np.uint8))[: total % 8]
        self.nbits += d * width

    def write_int(self, value: int, width: int) -> None:
        """One Python integer in ``[0, 2**width)`` in ``width`` bits (any width)."""
        if value < 0 or value >> width:
            raise ValueError(f"{value} does not fit in {width} bits")
        self.write_ints([value], width)

    def chunks(self) -> list[bytes]:
        """The bytes so far, in pieces (``getvalue`` joined), the last byte zero padded."""
        return [*self._bytes, np.packbits(self._tail).tobytes()]

    def getvalue(self) -> bytes:
        return b"".join(self.chunks())


class BitReader:
    """Reads what ``BitWriter`` wrote; reading past ``nbits`` raises EOFError."""

    def __init__(self, data: bytes, nbits: int | None = None) -> None:
        self._buf = np.frombuffer(data, dtype=np.uint8)
        self.nbits = len(data) * 8 if nbits is None else nbits
        if self.nbits > len(data) * 8:
            raise EOFError(f"{self.nbits} bits announced, {len(data) * 8} present")
        self.pos = 0

    def _check(self, n: int) -> None:
        if self.pos + n > self.nbits:
            raise EOFError(f"needs {n} bits at bit {self.pos}, {self.nbits - self.pos} left")

    def _take(self, n: int) -> np.ndarray:
        self._check(n)
        start, off = divmod(self.pos, 8)
        bits = np.unpackbits(self._buf[start : -(-(self.pos + n) // 8)])[off : off + n]
        self.pos += n
        return bits

    def read(self, count: int, width: int) -> np.ndarray:
        """``count`` fields of ``width`` bits (0..64) as uint64."""
        out = np.zeros(count, dtype=np.uint64)
        if width == 0:
            return out
        if width % 8 == 0 and self.pos % 8 == 0:  # whole bytes: no detour through single bits
            self._check(count * width)
            nb, start = width // 8, self.pos // 8
            octets = np.zeros((count, 8), dtype=np.uint8)
            octets[:, 8 - nb :] = self._buf[start : start + count * nb].reshape(count, nb)
            self.pos += count * width
            return octets.view(">u8").reshape(-1).astype(np.uint64)
        for i in range(0, count, _CHUNK):
            k = min(_CHUNK, count - i)
            out[i : i + k] = _field_values(self._take(k * width), width)
        return out

    def read_bits(self, count: int) -> np.ndarray:
        """The next ``count`` single bits as 0/1 uint8."""
        return self._take(count)

    def read_codes(self, count: int, width: int) -> np.ndarray:
        """``count`` fields of 16 or 32 bits as uint16 / uint32 (copied as bytes when the reader
        is at a byte boundary)."""
        dt = _CODE_DTYPES[width]
        if self.pos % 8:
            return self.read(count, width).astype(dt)
        self._check(count * width)
        start = self.pos // 8
        raw = self._buf[start : start + count * width // 8].view(dt.newbyteorder(">"))
        self.pos += count * width
        return raw.astype(dt)

    def read_ints(self, count: int, width: int) -> list[int]:
        """``count`` fields of any width as Python integers."""
        if width == 0:
            return [0] * count
        nb = (width + 7) // 8
        full = np.zeros((count, 8 * nb), dtype=np.uint8)
        full[:, 8 * nb - width :] = self._take(count * width).reshape(count, width)
        raw = np.packbits(full, axis=1).tobytes()
        return [int.from_bytes(raw[i : i + nb], "big") for i in range(0, count * nb, nb)]

    def read_words(self, count: int, width: int) -> np.ndarray:
        """``count`` fields of ``width`` bits (65 or more) as rows of ``ceil(width / 64)``
        little-endian uint64 words (inverse of ``BitWriter.write_words``)."""
        nw = -(-width // 64)
        if width <= 64:
            raise ValueError(f"read_words takes a width above 64, got {width}")
        self._check(count * width)
        first, lead = divmod(self.pos, 8)
        nbytes = -(-(lead + count * width) // 8)
        buf = np.zeros(-(-nbytes // 8) * 8 + 16, dtype=np.uint8)
        buf[:nbytes] = self._buf[first : first + nbytes]
        be = buf.view(">u8").astype(np.uint64)
        start = lead + width * np.arange(count, dtype=np.int64)
        s = (start % 64).astype(np.uint64)[:, None]
        got = be[(start // 64)[:, None] + np.arange(nw + 1)]
        top = (got[:, :nw] << s) | (got[:, 1:] >> (np.uint64(64) - s))  # field first
        u = np.uint64(64 * nw - width)
        field = top >> u
        field[:, 1:] |= top[:, :-1] << (np.uint64(64) - u)
        self.pos += count * width
        return np.ascontiguousarray(field[:, ::-1])

    def read_int(self, width: int) -> int:
        """One field of any width as a Python integer."""
        return self.read_ints(1, width)[0]


# -- values and positions -------------------------------------------------------------------------


def value_codes(w: Tensor, value_bits: int) -> Tensor:
    """int64 codes of ``w`` (same shape): the float32 or float16 bit pattern; zeros as +0.0."""
    fdt, _, np_dt, _ = VALUE_BITS[value_bits]
    w = w.detach().cpu()
    # Zeros are found before the cast, so a value float16 rounds to -0.0 keeps its sign bit.
    zero = (w == 0).numpy() if w.dtype == torch.bfloat16 else w.numpy() == 0
    codes = w.to(fdt).contiguous().numpy().view(np_dt).astype(np.int64)
    codes[zero] = 0
    return torch.from_numpy(codes)


def float_values(w: Tensor) -> np.ndarray:
    """``w`` as a numpy array (bfloat16, which numpy lacks, as float32: exact)."""
    w = w.detach().cpu()
    return (w.float() if w.dtype == torch.bfloat16 else w).contiguous().numpy()


def codes_of(values: np.ndarray, value_bits: int) -> np.ndarray:
    """``value_codes`` of a numpy array of weights: uint32 or uint16 codes, zeros as +0.0."""
    _, _, np_dt, np_float = VALUE_BITS[value_bits]
    codes = values.astype(np_float).view(np_dt)
    codes[values == 0] = 0  # found before the cast (see value_codes)
    return codes


def from_codes(codes: Tensor, value_bits: int, dtype: torch.dtype) -> Tensor:
    """Inverse of ``value_codes``, in ``dtype``."""
    _, _, np_dt, np_float = VALUE_BITS[value_bits]
    return torch.from_numpy(codes.numpy().astype(np_dt).view(np_float)).to(dtype)


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
