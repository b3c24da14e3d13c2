"""Safe files: safetensors + JSON metadata, written atomically; nothing loaded can run code.

Every file is written to a temporary file beside it, fsynced and renamed over the target, so a
crash, a full disk or a refused write leaves the old file (or none) and never half of a new one.
Written files get the mode the umask gives a new file (``0o666 & ~umask``), like any other
program's, not ``mkstemp``'s private 0600. A write that fails is a ``WriteError`` naming the
path and the reason. ``check_writable`` says before any work whether an output path can be
written at all: a directory where a file is meant, a file where a directory is meant, a
dangling symbolic link, a missing or read-only directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from .errors import ConfigError

META_KEY = "sparsegrain"


class WriteError(ConfigError):
    """A file could not be written (full disk, read-only file system, no permission). The
    message names the path; the file that was there before is unchanged."""


def write_error(path: str | Path, err: OSError) -> WriteError:
    """The one-line error for an ``OSError`` while writing ``path``."""
    reason = err.strerror or str(err) or type(err).__name__
    return WriteError(f"cannot write {path}: {reason}; nothing there was replaced")


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


def _target(path: Path) -> Path:
    """Where a write of ``path`` lands: through a symbolic link to its file, so the link stays."""
    if path.is_symlink():
        if not path.exists():
            raise WriteError(f"cannot write {path}: a dangling symbolic link ({os.readlink(path)})")
        return Path(os.path.realpath(path))
    return path


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (``torch.onnx``,
    a plot): on a clean exit it is fsynced, given the umask's mode and renamed over ``path``; on
    an error it is removed. An ``OSError`` of the writer or of the rename is a ``WriteError``."""
    shown = Path(path)
    path = _target(shown)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        PENDING.add(tmp)
    except OSError as e:
        raise write_error(shown, e) from None
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise write_error(shown, e) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
        PENDING.discard(tmp)


# Temporary files of writes in progress: a command that a signal ends at once (``os._exit``, see
# ``cli.main``) removes them first, so no ``.*.tmp`` is left behind.
PENDING: set[str] = set()


def remove_pending() -> None:
    """Remove the temporary files of the writes in progress (a command being stopped)."""
    for tmp in list(PENDING):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    PENDING.clear()


def atomic_write(path: str | Path, data: bytes | Sequence[bytes | memoryview]) -> None:
    """Write ``data`` (bytes, or chunks written one after another, so that a large file need
    not be joined in memory first) to ``path`` so that a crash leaves either the old file or the
    new one.

    Temporary file in the same directory, fsync, the umask's mode, rename over the target, fsync
    the directory. A failure (``ENOSPC``, ``EROFS``, ``EACCES``, ...) removes the temporary
    file, leaves the target as it was and raises ``WriteError`` naming ``path``."""
    chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else data
    shown = Path(path)
    path = _target(shown)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        PENDING.add(tmp)
        try:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, new_file_mode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        PENDING.discard(tmp)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        raise write_error(shown, e) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
            PENDING.discard(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, text.encode())


def _can_write(directory: Path) -> bool:
    """Whether entries can be created in ``directory`` (read-only mounts included)."""
    return os.access(directory, os.W_OK | os.X_OK)


def check_writable(path: str | Path, *, kind: str = "file", flag: str = "--out") -> Path:
    """Refuse, before any work, an output ``path`` that cannot be written as a ``kind``
    (``"file"`` or ``"dir"``): a ConfigError naming ``flag``, the path and the problem."""
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    p = Path(path)
    label = f"{flag} {p}"
    if p.is_symlink() and not p.exists():
        raise ConfigError(
            f"{label}: is a dangling symbolic link (to {os.readlink(p)}); remove it or give "
            "another path"
        )
    if p.exists():
        if kind == "file" and p.is_dir():
            raise ConfigError(f"{label}: is a directory; give a file path")
        if kind == "dir" and not p.is_dir():
            raise ConfigError(f"{label}: exists and is not a directory")
        if kind == "dir" and not _can_write(p):
            raise ConfigError(f"{label}: the directory is not writable")
        if kind == "file" and not os.access(p, os.W_OK):
            raise ConfigError(f"{label}: the file is read-only")
        if kind == "file" and not _can_write(_target(p).parent):
            raise ConfigError(f"{label}: its directory {_target(p).parent} is not writable")
        return p
    ancestor = p.parent
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise ConfigError(
                f"{label}: {ancestor} is a dangling symbolic link (to {os.readlink(ancestor)})"
            )
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{label}: {ancestor} is a file, not a directory")
    if not _can_write(ancestor):
        raise ConfigError(f"{label}: cannot be created, {ancestor} is not writable")
    return p


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Save tensors with a JSON metadata record, atomically."""
    # safetensors wants contiguous tensors that share no storage (tied or channels_last weights).
    flat = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    data = st_save(flat, metadata={META_KEY: json.dumps(meta)})
    atomic_write(path, data)


def load_tensors(path: str | Path, what: str = "file") -> tuple[dict[str, torch.Tensor], dict]:
    """Load a file written by ``save_tensors``; missing, truncated or foreign: a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta_raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"{what} {path} is truncated or not a safetensors file ({reason})"
        ) from None
    try:
        meta = json.loads(meta_raw) if meta_raw else {}
    except json.JSONDecodeError:
        raise ConfigError(f"{what} {path} has corrupt metadata") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{what} {path} has corrupt metadata (not a JSON object)")
    return tensors, meta


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-able remainder."""
    tensors, scalars = {}, {}
    for idx, st in state["state"].items():
        scalars[str(idx)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v
            else:
                scalars[str(idx)][k] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict[str, Any]] = {int(i): dict(s) for i, s in rest["scalars"].items()}
    for key, v in tensors.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": rest["param_groups"]}
