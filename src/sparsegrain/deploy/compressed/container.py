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

Sections: a sparse layer's is described in ``encodings.py``. Raw tensors: their bytes in their
own dtype (float32 for BN, biases and dense layers).
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...analysis.storage import BitWidths, best_encoding
from ...core.errors import ConfigError, unknown_name
from ...core.io import atomic_write
from ...structures import Structure, parse_structure
from .bits import check_bits
from .encodings import decode_layers, encode_layers, map_layers
from .ranks import VERSION, VERSIONS, check_version

MAGIC = b"\x89SGC\r\n\x1a\n"
FORMAT = "sparsegrain-compressed"
DTYPES = {
    n: getattr(torch, n)
    for n in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8")
} | {"uint8": torch.uint8, "bool": torch.bool}
SPARSE_DTYPES = ("float32", "float16", "bfloat16")
_MAX_HEADER = 256 << 20


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


def _raw_bytes(t: Tensor) -> memoryview:
    """The tensor's bytes, without a copy where it is contiguous."""
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


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
    version: int = VERSION,
) -> dict:
    """Write the compressed file (module doc) atomically; return what was written vs predicted.

    ``version`` is the format version (``VERSIONS``; the latest by default, 1 for readers of
    sparsegrain before its split ranks: the files differ only in wide quota-rank fields).

    ``structures`` maps a layer name (``"layer1.0.conv1"``, or a state_dict key) to its structure
    spec, or None for a layer left dense; tensors it does not name are stored raw. Each sparse
    layer uses ``layer_storage(weight, structure, bits)["best"]`` (``best_encoding``, the same
    choice without the bound); the layers are encoded together (``encode_layers``). The result:
    ``layers`` (per sparse layer ``name``, ``structure``, ``encoding``, ``predicted_bits`` from
    storage.py, ``written_bits``, ``bytes``), ``raw_bits``, ``file_bytes``, ``header_bytes``
    (magic, length and compressed header), ``payload_bytes``, ``predicted_bytes`` (sparse best
    bits + raw bits, rounded up to bytes, + header bytes) and ``ratio`` (``file_bytes /
    predicted_bytes``), and ``ratio_to_storage`` (``file_bytes`` over the prediction without the
    header).
    """
    bits = check_bits(bits or BitWidths())
    check_version(version)
    sd = _state_dict(model_or_state_dict)
    sparse = _sparse_keys(sd, structures)

    def choose(key: str) -> tuple[str, Structure, str, int]:
        layer, spec = sparse[key]
        st = parse_structure(spec)
        try:
            best, cost = best_encoding(sd[key], st, bits)  # layer_storage's "best", no bound
        except ValueError as e:
            raise ValueError(f"layer '{layer}': {e}") from None
        return layer, st, best, cost.total

    plan = dict(zip(sparse, map_layers(choose, list(sparse))))  # key -> layer, st, best, bits
    layers = [(sd[key], st, best) for key, (_, st, best, _) in plan.items()]
    encoded = dict(zip(plan, encode_layers(layers, bits, version, joined=False)))
    entries, sections, rows, offset, raw_bits, crc = [], [], [], 0, 0, 0
    for key, t in sd.items():
        entry: dict[str, Any] = {"name": key, "shape": list(t.shape), "dtype": str(t.dtype)[6:]}
        if key in plan:
            (layer, st, best, predicted), out = plan[key], encoded[key]
            chunks = out["data"]
            size = sum(len(c) for c in chunks)
            entry.update(layer=layer, structure=st.spec, encoding=best)
            entry.update(bits=out["bits"], counts=out["counts"])
            rows.append({"name": layer, "structure": st.spec, "encoding": best})
            rows[-1].update(predicted_bits=predicted, written_bits=out["bits"], bytes=size)
        else:
            chunks = [_raw_bytes(t)]
            size = len(chunks[0])
            raw_bits += 8 * size
        entry.update(offset=offset, bytes=size)
        offset += size
        entries.append(entry)
        for chunk in chunks:
            sections.append(chunk)
            crc = zlib.crc32(chunk, crc)
    header = {
        "format": FORMAT,
        "version": version,
        "byteorder": "little",
        "bits": {"value": bits.value, "index": bits.index},
        "payload": {"bytes": offset, "crc32": crc},
        "tensors": entries,
    }
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    head = MAGIC + struct.pack("<I", len(head)) + head
    atomic_write(path, [head, *sections])  # the sections are never joined in memory
    predicted = -(-(sum(r["predicted_bits"] for r in rows) + raw_bits) // 8)
    file_bytes = len(head) + offset
    return {
        "path": str(path),
        "bits": {"value": bits.value, "index": bits.index},
        "layers": rows,
        "raw_bits": raw_bits,
        "file_bytes": file_bytes,
        "header_bytes": len(head),
        "payload_bytes": offset,
        "predicted_bytes": predicted + len(head),
        "ratio": file_bytes / (predicted + len(head)),
        "ratio_to_storage": file_bytes / predicted if predicted else math.inf,
    }


def _read_header(path: Path, blob: bytes | mmap.mmap) -> tuple[dict, memoryview]:
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
    if version not in VERSIONS:
        raise ConfigError(
            f"compressed file {path} has version {version}; this reads "
            f"{', '.join(map(str, VERSIONS))}"
        )
    return header, memoryview(blob)[12 + size :]  # no copy of the payload


def read_compressed(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """The dense state_dict of a file ``write_compressed`` wrote, and its header as ``meta``.

    Values come back bit-exact at ``bits.value = 32`` (zeros as +0.0); a missing, truncated,
    corrupt or foreign file raises ConfigError naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"compressed file not found: {path}")
    blob = _map(path)
    try:
        return _read_mapped(path, blob)
    finally:
        if isinstance(blob, mmap.mmap):
            with contextlib.suppress(BufferError):  # a view still lives: the map goes with it
                blob.close()


def _map(path: Path) -> bytes | mmap.mmap:
    """The file's bytes, memory-mapped where possible (no copy into fresh memory; every writer
    of these files replaces them by rename, so a mapped file is never cut short under us)."""
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # an empty file, or a file system that cannot map
            return f.read()


def _read_mapped(path: Path, blob: bytes | mmap.mmap) -> tuple[dict[str, Tensor], dict]:
    header, payload = _read_header(path, blob)
    try:
        want, crc = int(header["payload"]["bytes"]), int(header["payload"]["crc32"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"compressed file {path} has a corrupt header (payload)") from None
    if len(payload) != want:
        raise ConfigError(
            f"compressed file {path} is truncated or padded: payload of {len(payload)} bytes, "
            f"header says {want}"
        )
    with ThreadPoolExecutor(1) as pool:  # the checksum (no interpreter lock) beside decoding
        checksum = pool.submit(zlib.crc32, payload)
        failure: Exception | None = None
        try:
            bits = check_bits(
                BitWidths(value=header["bits"]["value"], index=header["bits"]["index"])
            )
            state = _read_tensors(header["tensors"], payload, bits, header["version"])
        except Exception as e:  # judged once the checksum is known
            failure = e
        if checksum.result() != crc:  # a bad payload is named as such, whatever decoding said
            raise ConfigError(f"compressed file {path} is corrupt (payload checksum mismatch)")
    if isinstance(
        failure, ValueError | EOFError | KeyError | TypeError | IndexError | RuntimeError
    ):
        msg = f"{type(failure).__name__}: {failure}"
        raise ConfigError(f"compressed file {path} is corrupt ({msg})") from None
    if failure is not None:
        raise failure
    return state, header


def _read_tensors(
    entries: list[dict], payload: memoryview, bits: BitWidths, version: int
) -> dict[str, Tensor]:
    """Every tensor of the header, in order; the sparse sections decoded together."""
    raw, sparse = {}, {}
    for entry in entries:
        start, size = int(entry["offset"]), int(entry["bytes"])
        if start < 0 or size < 0 or start + size > len(payload):
            raise ValueError(f"tensor {entry['name']} lies outside the payload")
        data, shape = payload[start : start + size], [int(d) for d in entry["shape"]]
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"tensor {entry['name']}: unknown dtype {entry['dtype']!r}")
        dtype = DTYPES[entry["dtype"]]
        if "encoding" not in entry:
            raw[entry["name"]] = _from_raw(data, shape, dtype)
            continue
        nbits = int(entry["bits"])
        if -(-nbits // 8) != size:
            raise ValueError(f"tensor {entry['name']}: {nbits} bits in {size} bytes")
        sparse[entry["name"]] = (
            data, shape, entry["structure"], entry["encoding"], entry["counts"], dtype, nbits
        )  # fmt: skip
    decoded = dict(zip(sparse, decode_layers(list(sparse.values()), bits, version)))
    return {e["name"]: raw[e["name"]] if e["name"] in raw else decoded[e["name"]] for e in entries}
