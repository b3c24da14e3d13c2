"""IDX files (MNIST, Fashion-MNIST), raw or gzip, parsed by hand into uint8 tensors.

Layout (big-endian): a 4-byte magic ``0x000008TT`` + ``0xDD`` where TT=08 is unsigned byte data and
DD the number of dimensions, then one uint32 per dimension, then the data in row-major order.
Images are ``0x00000803`` (N, H, W) and labels ``0x00000801`` (N,).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import torch
from torch import Tensor

from ..core.errors import ConfigError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx_file(root: Path, name: str, hint: str) -> Path:
    """``root/name`` if present, else ``root/name.gz``; ConfigError naming both when neither is."""
    for path in (root / name, root / f"{name}.gz"):
        if path.is_file():
            return path
    where = "directory does not exist" if not root.is_dir() else "file not found"
    raise ConfigError(f"missing IDX file {root / name} (or {name}.gz): {where}; {hint}")


def read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped when the name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"cannot read IDX file {path}: {e}") from e


def parse_idx(data: bytes, magic: int, path: Path) -> Tensor:
    """Parse one IDX file's bytes; check the magic number and the exact length."""
    ndim = magic & 0xFF
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ConfigError(
            f"IDX file {path} is truncated: expected a {header}-byte header for {kind}, "
            f"got {len(data)} bytes"
        )
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise ConfigError(
            f"IDX file {path} has magic number 0x{found:08x}; "
            f"expected 0x{magic:08x} ({kind}, unsigned bytes, {ndim} dims)"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = 1
    for d in dims:
        count *= d
    if len(data) != header + count:
        state = "truncated" if len(data) < header + count else "longer than its header says"
        raise ConfigError(
            f"IDX file {path} is {state}: header says dims {dims}, so expected "
            f"{header + count} bytes, got {len(data)}"
        )
    if count == 0:  # an empty split, or images of no pixels: nothing to train or test on
        raise ConfigError(
            f"IDX file {path} holds no data: header says dims {dims}; expected at least one "
            f"{kind[:-1]}" + (" of at least 1x1 pixels" if kind == "images" else "")
        )
    flat = torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8)
    return flat.reshape(dims)


def read_idx_split(root: Path, split: str, hint: str) -> tuple[Tensor, Tensor]:
    """Images uint8 ``(N, 1, H, W)`` and labels int64 ``(N,)`` of one split."""
    image_name, label_name = SPLIT_FILES[split]
    image_path = find_idx_file(root, image_name, hint)
    label_path = find_idx_file(root, label_name, hint)
    images = parse_idx(read_bytes(image_path), IMAGES_MAGIC, image_path)
    labels = parse_idx(read_bytes(label_path), LABELS_MAGIC, label_path)
    if images.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"IDX files disagree on the number of samples: {image_path} holds "
            f"{images.shape[0]} images, {label_path} {labels.shape[0]} labels; expected one "
            "label per image"
        )
    return images.unsqueeze(1), labels.to(torch.int64)


def read_idx_dataset(root: Path, num_classes: int, hint: str) -> dict[str, tuple[Tensor, Tensor]]:
    """Both splits of an IDX dataset, checked for one image size and labels in range."""
    splits = {split: read_idx_split(root, split, hint) for split in SPLIT_FILES}
    shapes = {split: tuple(x.shape[2:]) for split, (x, _) in splits.items()}
    if shapes["train"] != shapes["test"]:
        raise ConfigError(
            f"IDX images in {root} differ in size between splits: train "
            f"{'x'.join(map(str, shapes['train']))}, test {'x'.join(map(str, shapes['test']))}; "
            "expected one image size"
        )
    for split, (_, y) in splits.items():
        if len(y) and int(y.max()) >= num_classes:
            raise ConfigError(
                f"IDX labels of the {split} split in {root} go up to {int(y.max())}; "
                f"expected labels in [0, {num_classes - 1}]"
            )
    return splits
