"""Writing a run directory: one writer at a time, and a replaced run kept until the new one runs.

``RunLock``: an exclusive ``fcntl.flock`` on ``DIR/.sparsegrain.lock``, held while a process
writes the run; the holder's process id and host are written into the file, and a second writer
is refused naming them. The kernel drops the lock when its process ends, however it ends, so
the file a killed process leaves behind blocks nobody.

``RunDir``: the context a training process writes its run in (under torchrun, rank 0 only)::

    with RunDir(out, resume=resume, overwrite=overwrite) as rd:
        write_recipe(rd.path, recipe)
        for epoch in ...:
            save_checkpoint(rd.path, ...)
            write_metrics(rd.path, history)
            rd.commit()                      # the new run has started: it now is ``out``
        finish(rd.path, ...)

A new run over an old one (``--overwrite``) is written into ``DIR/.sparsegrain-new`` while the
old run stays in place; ``commit`` after the first checkpoint moves it in: a journal naming the
files to move and the old files to drop is written first, so a process killed during the swap
leaves a journal the next writer finishes. A run that fails or is interrupted before its first
checkpoint leaves nothing: the new files are removed, the old run (if any) is untouched, a
directory made for it is removed again.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from ..core.errors import ConfigError
from ..core.io import atomic_write_text, check_writable

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
MASKS = "masks.safetensors"
SUMMARY = "summary.json"
RECIPE = "recipe.yaml"
METRICS = "metrics.jsonl"
ANALYSIS = "analysis.json"
# The files a run directory is made of; ``train --overwrite`` replaces them all (an old
# analysis.json describes the old weights). Other files in the directory are left alone.
RUN_FILES = (RECIPE, CHECKPOINT, METRICS, WEIGHTS, MASKS, SUMMARY, ANALYSIS)
# Entries of a run directory that are not the run: the writer's lock, a new run not yet started.
LOCK = ".sparsegrain.lock"
STAGING = ".sparsegrain-new"
JOURNAL = "commit.json"


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a run (its recipe, checkpoint or summary)."""
    return any((Path(path) / name).is_file() for name in (RECIPE, CHECKPOINT, SUMMARY))


def run_entries(out: Path) -> list[str]:
    """The names in ``out`` other than the lock file and a not yet started run."""
    return sorted(p.name for p in Path(out).iterdir() if p.name not in (LOCK, STAGING))


def has_checkpoint(out: Path) -> bool:
    """A checkpoint in ``out``, or in a new run whose swap into ``out`` was interrupted."""
    staged = Path(out) / STAGING
    return (Path(out) / CHECKPOINT).is_file() or (
        (staged / JOURNAL).is_file() and (staged / CHECKPOINT).is_file()
    )


def never_started(out: Path) -> bool:
    """A run stopped between writing its recipe and its first checkpoint (a SIGKILL in those
    milliseconds): ``recipe.yaml`` alone, beside the lock file its killed writer left (so a
    user's own ``recipe.yaml`` is never taken for one). ``--resume`` starts it from the
    beginning and a new ``train`` may use the directory, so neither command is a dead end."""
    out = Path(out)
    return out.is_dir() and (out / LOCK).is_file() and run_entries(out) == [RECIPE]


def prepare_out_dir(
    out: str | Path, *, resume: bool, overwrite: bool, write: bool = True, flag: str = "--out"
) -> None:
    """Check the output directory before anything is built (every rank; ``write``: the rank
    that writes, which also checks that it can write there and that no other process is
    writing the run). Nothing is created or removed here: ``RunDir`` does that once the run is
    built, under the directory's lock."""
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; choose one")
    if write:
        check_writable(out, kind="dir", flag=flag)
        check_unlocked(out, flag)
    elif out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out}: exists and is not a directory")
    if resume:
        if not has_checkpoint(out) and not never_started(out):
            raise ConfigError(f"--resume: no {CHECKPOINT} in {out}; nothing to resume")
        return
    entries = run_entries(out) if out.is_dir() and not never_started(out) else []
    if entries and not overwrite:
        raise ConfigError(
            f"{flag} {out}: directory is not empty; give --resume to continue the "
            "run there or --overwrite to replace it"
        )
    if entries and not any(name in RUN_FILES for name in entries):
        more = ", ..." if len(entries) > 3 else ""
        raise ConfigError(
            f"{flag} {out}: holds no sparsegrain run ({', '.join(entries[:3])}{more}); "
            "--overwrite replaces a run, never other files: choose an empty or new directory"
        )


def check_unlocked(out: str | Path, flag: str = "--out") -> None:
    """Refuse a run directory another process is writing, naming that process."""
    try:
        fd = os.open(Path(out) / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file: nobody writes there
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(out, flag, fd) from None
    finally:
        os.close(fd)


def _busy(out: str | Path, flag: str, fd: int) -> ConfigError:
    text = os.pread(fd, 200, 0).decode(errors="replace").strip().splitlines()
    holder = text[0] if text else "process id and host not written yet"
    return ConfigError(
        f"{flag} {out}: another sparsegrain process is writing this run ({holder}); "
        f"wait for it to end or choose another {flag}"
    )


def _flock_soon(fd: int, tries: int = 5) -> None:
    """An exclusive flock, tried a few times over 0.1 s: ``check_unlocked`` holds a shared one
    for a moment while it looks."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if i == tries - 1:
                raise
            time.sleep(0.02)


class RunLock:
    """The exclusive writer's lock of run directory ``directory`` (which must exist)."""

    def __init__(self, directory: str | Path, flag: str = "--out"):
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self.flag = flag
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                _flock_soon(fd)
            except BlockingIOError:
                err = _busy(self.directory, self.flag, fd)
                os.close(fd)
                raise err from None
            except OSError:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed it as it let go: lock the file there now
                os.close(fd)
                continue
            now = datetime.datetime.now().isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {now}\n"
                      .encode(), 0)  # fmt: skip
            self.fd = fd
            return self
        raise ConfigError(f"{self.flag} {self.directory}: could not lock {self.path}")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunDir:
    """Where a run is written (``path``), locked for this process; see the module doc.

    ``write=False`` (ranks that write nothing): no lock, ``path`` is ``out``, ``commit`` does
    nothing."""

    def __init__(
        self,
        out: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        write: bool = True,
        flag: str = "--out",
    ):
        self.out = Path(out)
        self.path = self.out
        self.resume, self.overwrite, self.write, self.flag = resume, overwrite, write, flag
        self.lock: RunLock | None = None
        self.committed = resume or not write
        self.staged = False
        self.created: list[Path] = []  # the directories made for this run, innermost first

    def __enter__(self) -> RunDir:
        if not self.write:
            return self
        check_writable(self.out, kind="dir", flag=self.flag)
        d = self.out
        while not d.exists() and d != d.parent:
            self.created.append(d)
            d = d.parent
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self.lock = RunLock(self.out, self.flag).acquire()
            recover(self.out)
            # the checks again, under the lock: another writer may have been here since
            prepare_out_dir(
                self.out, resume=self.resume, overwrite=self.overwrite, write=False, flag=self.flag
            )
            if self.overwrite and run_entries(self.out):
                (self.out / STAGING).mkdir()
                self.path, self.staged = self.out / STAGING, True
        except BaseException:
            self._close()
            raise
        return self

    def commit(self) -> None:
        """The run has written its first checkpoint: from now on it is the run in ``out``."""
        if self.committed:
            return
        if self.staged:
            staging = self.out / STAGING
            moves = [n for n in RUN_FILES if (staging / n).exists()]
            drops = [n for n in RUN_FILES if n not in moves and (self.out / n).exists()]
            atomic_write_text(staging / JOURNAL, json.dumps({"move": moves, "drop": drops}))
            self.committed = True  # from here a swap cut short is finished, never undone
            recover(self.out)
            self.path, self.staged = self.out, False
        self.committed = True

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and not self.committed:
                self._abandon()
        finally:
            self._close()

    def _abandon(self) -> None:
        """Remove what a run that never reached its first checkpoint wrote; an old run it was
        to replace stays as it was."""
        if self.staged:
            shutil.rmtree(self.out / STAGING, ignore_errors=True)
            self.path, self.staged = self.out, False
            return
        for name in RUN_FILES:  # none was there when it began
            (self.out / name).unlink(missing_ok=True)

    def _close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if not self.committed:
            with contextlib.suppress(OSError):  # only when empty: made for this run, left empty
                for d in self.created:
                    d.rmdir()


def recover(out: Path) -> None:
    """Finish a swap a killed process began (its journal is there), or drop a new run that never
    reached its first checkpoint. Call with the directory's lock held."""
    staging = Path(out) / STAGING
    if not staging.is_dir():
        return
    journal = staging / JOURNAL
    if not journal.is_file():
        shutil.rmtree(staging)
        return
    try:
        plan = json.loads(journal.read_text())
        plan = {k: [n for n in plan[k] if n in RUN_FILES] for k in ("drop", "move")}
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{journal}: unreadable; it lists the files of a new run to move into {out}: "
            f"move them by hand or remove {staging}"
        ) from None
    for name in plan["drop"]:
        (Path(out) / name).unlink(missing_ok=True)
    for name in plan["move"]:
        if (staging / name).exists():
            os.replace(staging / name, Path(out) / name)
    dir_fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    journal.unlink()
    shutil.rmtree(staging, ignore_errors=True)
