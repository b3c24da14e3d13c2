"""How a training run stops on a signal: SIGINT and SIGTERM raise ``Interrupted``, whose line
says what stopped the run and the command that continues it."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM: ``str`` is the line to print (what stopped it, and the
    command that continues it), ``status`` the conventional exit status, 128 + the signal."""

    def __init__(self, signum: int = signal.SIGINT, resumable: bool = True):
        name = signal.Signals(signum).name
        what = "interrupted" if signum == signal.SIGINT else f"terminated ({name})"
        super().__init__(what + next_step(resumable))
        self.signum, self.status = signum, 128 + signum


def next_step(resumable: bool) -> str:
    """The end of a stop's message: the command that continues the run."""
    if resumable:
        return "; resume with --resume"
    return " before the first checkpoint; run the same command again"


class Stops:
    """How a run stops, for its length. SIGINT and SIGTERM (what schedulers send) raise
    ``Interrupted`` where Python next runs, so atomic writes remove their temporary file; inside
    ``held()`` they wait until its block is done. A second one while the first unwinds is
    ignored, so that it cannot cut the clean-up short. Only the main thread can set handlers
    (elsewhere the signals keep theirs); the previous handlers come back afterwards.
    ``started``: the run directory holds the run's recipe and a checkpoint to resume from."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, started: bool):
        self.started, self.holding, self.pending = started, False, None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Stops:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._stop) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)

    def _stop(self, signum: int, frame) -> None:
        if self.holding:
            self.pending = self.pending or signum
            return
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    @contextlib.contextmanager
    def held(self):
        """A block a signal does not cut: one that came in is raised when it is done."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending is not None:
            self._stop(self.pending, None)
