"""Compressed model files: sparse layers bit-packed in storage.py's best encoding, the rest raw.

``container`` holds the file layout (``write_compressed``, ``read_compressed``), ``encodings`` one
layer's section per encoding (``encode_layer``, ``decode_layer``; ``encode_layers`` and
``decode_layers`` for many at once), ``bits`` the field packing (``BitWriter``, ``BitReader``),
value codes and relative gaps, ``ranks`` the subset ranks of ``quota-rank``.
"""

from .bits import VALUE_BITS, BitReader, BitWriter
from .container import (
    DTYPES,
    FORMAT,
    MAGIC,
    SPARSE_DTYPES,
    VERSION,
    read_compressed,
    write_compressed,
)
from .encodings import decode_layer, decode_layers, encode_layer, encode_layers

__all__ = [
    "DTYPES",
    "FORMAT",
    "MAGIC",
    "SPARSE_DTYPES",
    "VALUE_BITS",
    "VERSION",
    "BitReader",
    "BitWriter",
    "decode_layer",
    "decode_layers",
    "encode_layer",
    "encode_layers",
    "read_compressed",
    "write_compressed",
]
