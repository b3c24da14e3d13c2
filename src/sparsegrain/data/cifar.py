"""CIFAR-10 / CIFAR-100 in the python pickle layout, read through an unpickler that runs no code.

A pickle can call any importable function while loading, so these files are read by an unpickler
that resolves only the handful of globals a pickled numpy array needs and refuses every other one.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.errors import ConfigError

try:  # numpy >= 2 moved the pickle helpers to numpy._core; pickles name either path.
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it: str -> latin-1 bytes."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(obj).__name__}, {encoding!r})")
    return obj.encode("latin-1", errors)


# (module, name) -> object. Protocol 2 (the original CIFAR files, written by Python 2) and 3/4 use
# ndarray + _reconstruct + dtype; protocol 5 uses _frombuffer; Python 3's protocol 2 adds
# _codecs.encode for bytes objects. Nothing else is ever resolved.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``ALLOWED_GLOBALS``; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}' (only numpy array globals are allowed)"
            ) from None


def load_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR batch file as a dict with str keys; ConfigError naming the path on failure."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read CIFAR file {path}: {e}") from e
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # anything a malformed pickle raises (UnpicklingError, EOFError, ...)
        raise ConfigError(f"cannot load CIFAR file {path}: {e}") from e
    if not isinstance(obj, dict):
        raise ConfigError(f"CIFAR file {path} holds a {type(obj).__name__}; expected a dict")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def batch_arrays(path: Path, label_key: str, num_classes: int) -> tuple[Tensor, Tensor]:
    """Images uint8 ``(N, 3, 32, 32)`` and labels int64 ``(N,)`` from one batch file."""
    d = load_pickle(path)
    for key in ("data", label_key):
        if key not in d:
            raise ConfigError(
                f"CIFAR file {path} has no '{key}' entry; found keys: {', '.join(sorted(d))}"
            )
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ConfigError(f"CIFAR file {path}: 'data' must be a uint8 array (N, 3072); got {got}")
    if data.shape[1] != 3 * 32 * 32:
        raise ConfigError(
            f"CIFAR file {path}: 'data' rows must hold 3x32x32 pixels: expected (N, 3072), "
            f"got {data.shape}"
        )
    try:
        labels = torch.tensor(np.asarray(d[label_key], dtype=np.int64))
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"CIFAR file {path}: '{label_key}' must be a list of integer labels"
        ) from None
    if labels.shape != (data.shape[0],):
        raise ConfigError(
            f"CIFAR file {path}: '{label_key}' must have one label per image: expected "
            f"({data.shape[0]},), got {tuple(labels.shape)}"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(
            f"CIFAR file {path}: labels span [{int(labels.min())}, {int(labels.max())}]; "
            f"expected labels in [0, {num_classes - 1}]"
        )
    # Each row is the red plane, then green, then blue, each 32x32 row-major.
    images = torch.tensor(data).reshape(-1, 3, 32, 32)
    return images, labels


LAYOUTS = {
    # name: (sub-directory of the archive, train files, test files, label key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels", 100),
}


def resolve_root(root: Path, name: str) -> Path:
    """``root`` when it holds the batch files, else ``root/<archive dir>`` when that does."""
    subdir, train_files, _, _, _ = LAYOUTS[name]
    for candidate in (root, root / subdir):
        if (candidate / train_files[0]).is_file():
            return candidate
    raise ConfigError(
        f"no {name} data under data.root={root}: looked for {root / train_files[0]} and "
        f"{root / subdir / train_files[0]}; point data.root at the extracted python-version "
        f"archive ({subdir}) or the directory containing it"
    )


def read_cifar(root: Path, name: str) -> dict[str, tuple[Tensor, Tensor]]:
    """Both splits of CIFAR-10 or CIFAR-100 as uint8 images and int64 labels."""
    base = resolve_root(root, name)
    _, train_files, test_files, label_key, classes = LAYOUTS[name]
    splits = {}
    for split, files in (("train", train_files), ("test", test_files)):
        for f in files:
            if not (base / f).is_file():
                raise ConfigError(f"missing CIFAR file {base / f}")
        parts = [batch_arrays(base / f, label_key, classes) for f in files]
        splits[split] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        if len(splits[split][1]) == 0:
            raise ConfigError(
                f"CIFAR {split} files in {base} hold no images ({', '.join(files)}); expected "
                "at least one"
            )
    return splits
