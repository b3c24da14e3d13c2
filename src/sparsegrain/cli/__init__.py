"""Command line: a thin shell over the library. Mistakes print one line and exit with status 2.

A ``ConfigError`` (a recipe, flag or file mistake) and an ``OSError`` (a file that cannot be
written or read: full disk, read-only file system, no permission) are one line on stderr
naming the path or flag, exit status 2; a message of several lines is joined into one. A
stopped run (``TrainingError``) is one line, exit 1; an interrupt says how to continue, with
the status the exception carries (128 + the signal; 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from ..core.errors import ConfigError, TrainingError
from . import commands

EPILOG = "Recipes: see recipes/ and README.md. Every key can be changed with --set key.sub=value."


def _path(text: str) -> str:
    """A file or directory flag: an empty one (``--out ""``, an unset shell variable) would
    mean the current directory, so it is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (exit 2) instead of the usage dump."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"sparsegrain: error: {message} (see '{self.prog} -h')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sparsegrain",
        description="Structured sparse training, and proof of what the structure is worth.",
        epilog=EPILOG,
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="train a recipe into a run directory",
        description="Train a recipe. Writes DIR/summary.json, metrics.jsonl, "
        "recipe.yaml (resolved), model.safetensors and masks.safetensors.",
    )
    t.add_argument("--recipe", type=_path, metavar="FILE", help="YAML recipe (see recipes/)")
    t.add_argument("--out", type=_path, metavar="DIR", required=True, help="run directory to write")
    t.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a recipe key, e.g. --set train.epochs=5 (repeatable)",
    )
    t.add_argument(
        "--resume", action="store_true", help="continue the run in DIR from its last checkpoint"
    )
    t.add_argument("--overwrite", action="store_true", help="replace a previous run in DIR")
    t.add_argument(
        "--init",
        type=_path,
        metavar="RUN_DIR|FILE",
        help="start from trained weights (a run "
        "directory or a .safetensors file); needed by oneshot",
    )
    t.set_defaults(func=commands.train)

    e = sub.add_parser(
        "eval",
        help="evaluate a finished run on its test set",
        description="Evaluate DIR/model.safetensors on the run's test data.",
    )
    e.add_argument("--run", type=_path, metavar="DIR", required=True, help="run directory")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=commands.evaluate_run)

    a = sub.add_parser(
        "analyze",
        help="storage, FLOPs, accelerator model, robustness",
        description="What a sparse model is worth: storage per encoding with index "
        "overhead, dense and effective MACs, SCNN-like memory references (our "
        "reconstruction), accuracy, and on request adversarial robustness and "
        "per-layer sensitivity. Writes analysis.json.",
    )
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--run", type=_path, metavar="DIR", help="run directory (structures from its summary)"
    )
    src.add_argument("--weights", type=_path, metavar="FILE", help="a model.safetensors file")
    a.add_argument(
        "--recipe", type=_path, metavar="FILE", help="with --weights: the recipe of the model/data"
    )
    a.add_argument(
        "--structure",
        help="with --weights: structure of the layers that hold zeros (default fine)",
    )
    a.add_argument(
        "--out",
        type=_path,
        metavar="FILE",
        help="where to write (default: RUN/analysis.json, FILE.json)",
    )
    a.add_argument(
        "--force", action="store_true", help="write --out even over a file of a run or an input"
    )
    a.add_argument("--value-bits", type=int, default=32, help="bits per stored value, 1-64 (32)")
    a.add_argument("--index-bits", type=int, default=4, help="bits per relative index, 1-32 (4)")
    a.add_argument(
        "--attacks",
        metavar="LIST",
        help="fgsm,pgd: adversarial "
        "accuracy (slow: PGD runs --pgd-steps backward passes per batch)",
    )
    a.add_argument("--epsilons", default="0,0.01,0.02,0.05", help="L-inf radii in pixel units")
    a.add_argument("--pgd-steps", type=int, default=10, help="PGD iterations, >= 1 (10)")
    a.add_argument(
        "--baseline", type=_path, metavar="RUN_DIR", help="dense run to attack side by side"
    )
    a.add_argument(
        "--sensitivity",
        action="store_true",
        help="prune one layer at a time and suggest per-layer budgets (recipe overrides)",
    )
    a.add_argument("--sens-structure", help="structure for the sensitivity scan")
    a.add_argument("--max-batches", type=int, help="test batches for robustness/sensitivity")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    a.set_defaults(func=commands.analyze)

    sw = sub.add_parser(
        "sweep",
        help="train a grid of methods x structures x sparsities",
        description="Train one recipe over methods x structures x targets, one "
        "run directory per point, and print one table (also OUT/sweep.md and "
        "OUT/sweep.json). A stopped sweep continues when the same command is given again "
        "(with any --jobs): finished points are reused, interrupted ones resumed.",
    )
    sw.add_argument("--recipe", type=_path, metavar="FILE", required=True, help="base recipe")
    sw.add_argument("--out", type=_path, metavar="DIR", required=True, help="directory of the runs")
    sw.add_argument("--methods", default="campfire", help="comma list (dense adds a baseline)")
    sw.add_argument("--structures", default="fine", help="comma list, e.g. fine,window,nm:2:4")
    sw.add_argument("--targets", default="0.5,0.7,0.9", help="comma list of sparsities")
    sw.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every point (repeatable)",
    )
    sw.add_argument("--jobs", type=int, default=1, help="points trained at once (>= 1)")
    sw.set_defaults(func=commands.sweep)

    rp = sub.add_parser(
        "report",
        help="PNG plots and a Markdown report over runs",
        description="Plots (accuracy vs sparsity per structure, compression "
        "ratio and memory references when analysis.json exists, per-layer "
        "sparsity, mask pictures) and report.md linking them.",
    )
    rp.add_argument("runs", type=_path, nargs="+", metavar="DIR", help="run directories")
    rp.add_argument(
        "--out", type=_path, metavar="DIR", default="report", help="output directory (report)"
    )
    rp.set_defaults(func=commands.report)

    ex = sub.add_parser(
        "export",
        help="write a run's model as safetensors, ONNX or the compressed format",
        description="Export DIR/model.safetensors, optionally compacted (zeroed filters and "
        "channels removed where exact), and check the written file against the masked "
        "model's outputs on test images (max abs difference printed).",
    )
    ex.add_argument("--run", type=_path, metavar="DIR", required=True, help="run directory")
    ex.add_argument("--out", type=_path, metavar="PATH", required=True, help="file to write")
    ex.add_argument(
        "--force", action="store_true", help="write --out even over a file of a run or an input"
    )
    ex.add_argument("--compact", action="store_true", help="remove zeroed filters/channels first")
    ex.add_argument(
        "--fold-bn",
        action="store_true",
        help="with --compact: fold BatchNorms into the convs before them (inference form)",
    )
    ex.add_argument(
        "--channels-last",
        action="store_true",
        help="with --compact: hand the model over in channels_last memory format",
    )
    ex.add_argument(
        "--format",
        default="safetensors",
        choices=["safetensors", "onnx", "compressed"],
        help="safetensors (default), onnx (needs the onnx extra) or compressed",
    )
    ex.add_argument(
        "--bits",
        type=int,
        choices=[32, 16],
        help="with --format compressed: bits per stored value (32 exact, 16 float16 lossy)",
    )
    ex.set_defaults(func=commands.export)

    ls = sub.add_parser(
        "list",
        help="list models, datasets, structures or methods",
        description="List the registered names with a one-line description.",
    )
    ls.add_argument("what", choices=["models", "datasets", "structures", "methods"])
    ls.set_defaults(func=commands.list_names)
    return p


def _version() -> str:
    from ..core.version import VERSION as __version__

    return f"sparsegrain {__version__}"


def one_line(message: str) -> str:
    """A message of several lines as one: ``"x:\n  expected [3]\n  got [4]"`` becomes
    ``"x: expected [3]; got [4]"``."""
    parts = [" ".join(p.split()) for p in str(message).splitlines() if p.strip()]
    if not parts:
        return ""
    text = parts[0]
    for part in parts[1:]:
        text += (" " if text.endswith((":", ";", ",")) else "; ") + part
    return text


def _os_error(e: OSError) -> str:
    reason = e.strerror or str(e) or type(e).__name__
    path = e.filename
    return f"{path}: {reason}" if path is not None else reason


def _stopped(args, signum: int) -> str:
    """The line for a command a signal ends outside a training run's own handlers."""
    what = (
        "interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"
    )
    command = getattr(args, "command", None)
    if command == "train":
        rundir = sys.modules.get("sparsegrain.runs.rundir")  # loaded once a run can have one
        out = getattr(args, "out", None)
        if rundir is not None and out is not None and rundir.has_checkpoint(Path(out)):
            return f"{what}; resume with --resume"
        return f"{what} before the first checkpoint; run the same command again"
    if command == "sweep":
        return (
            f"{what}; run the same sweep command again to continue it: finished points are "
            "kept, interrupted ones resume"
        )
    return f"{what}; run the same command again"


class _Signals:
    """SIGINT and SIGTERM outside a training run's own handlers (start-up, export, analyze,
    report): one line, the temporary files of writes in progress removed, and exit at once with
    128 + the signal. Exiting rather than raising: an exception raised while ``import torch``
    runs its C++ initialisers can abort the process (SIGABRT) instead of stopping it. A training
    run and a sweep put their own handlers in place while they run (``train.stops``)."""

    def __init__(self):
        self.args = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._stop)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _stop(self, signum, frame) -> None:
        io = sys.modules.get("sparsegrain.core.io")
        if io is not None:
            io.remove_pending()
        print(f"sparsegrain: {_stopped(self.args, signum)}", file=sys.stderr, flush=True)
        os._exit(128 + signum)


def _interrupted(args, e: KeyboardInterrupt) -> str:
    """A training run's stop says what stopped it and how to continue; any other interrupt gets
    the line a signal would."""
    return str(e) or _stopped(args, signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every way it can stop is one line on stderr and an exit status."""
    args = None
    with _Signals() as signals:
        try:
            args = signals.args = build_parser().parse_args(argv)
            return args.func(args)
        except ConfigError as e:
            print(f"sparsegrain: error: {one_line(str(e))}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"sparsegrain: error: {one_line(_os_error(e))}", file=sys.stderr)
            return 2
        except TrainingError as e:
            print(f"sparsegrain: stopped: {one_line(str(e))}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as e:  # a training run's stop, saying how to continue
            print(f"sparsegrain: {one_line(_interrupted(args, e))}", file=sys.stderr)
            status = getattr(e, "status", 130)
            return status if isinstance(status, int) else 130


if __name__ == "__main__":
    sys.exit(main())
