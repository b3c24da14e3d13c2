"""``sparsegrain sweep``: one recipe, a grid of methods x structures x sparsities, one table.

Each point is an ordinary run directory ``OUT/<method>-<structure>-<target>`` trained in its own
process (``--jobs`` at a time, the cores split between them). A sweep that stopped (interrupted,
a point failed, the machine went down) continues when the same command is given again, with any
``--jobs``: finished points are reused and interrupted ones resumed. Every point's recipe is
checked before anything is trained, and so is every point already in ``OUT`` against the recipe
this sweep would give it (settings that cannot change a run's numbers, ``RUNTIME_KEYS``, may
differ).
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.io import atomic_write_text
from ..core.tables import format_table
from ..recipe.load import load_recipe
from ..runs.files import (
    CHECKPOINT,
    RECIPE,
    SUMMARY,
    is_run_dir,
    read_run_recipe,
    recipe_differences,
)
from ..runs.records import check_output_dir, read_summary
from .stops import Stops

# What the sweep's table and sweep.json read of every point's summary.json.
SUMMARY_KEYS = ("method", "structure", "target", "sparsity", "top1", "wall_time")
AGAIN = "run the same sweep command again to continue: finished points are kept"

_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()


def grid_points(
    methods: list[str], structures: list[str], targets: list[float]
) -> list[tuple[str, list[str]]]:
    """``(name, --set overrides)`` for every combination; a dense method ignores the rest."""
    points, seen = [], set()
    for method, structure, target in itertools.product(methods, structures, targets):
        if method == "dense":
            name, sets = "dense", ["sparsity.method=dense"]
        else:
            name = f"{method}-{structure.replace(':', '_')}-{target:g}"
            sets = [
                f"sparsity.method={method}",
                f"sparsity.structure={structure}",
                f"sparsity.target={target}",
            ]
        if name not in seen:
            seen.add(name)
            points.append((name, sets))
    return points


def run_point(
    recipe: Path, out: Path, sets: list[str], threads: int, log, extra: list[str] = ()
) -> dict[str, Any]:
    """Train one point in a subprocess (or reuse / resume it); return its summary.

    ``extra`` are more ``sparsegrain train`` arguments of a fresh start (``--init DIR``)."""
    if (out / SUMMARY).is_file():
        return read_summary(out, SUMMARY_KEYS, flag="sweep point")
    cmd = [
        sys.executable,
        "-m",
        "sparsegrain",
        "train",
        "--out",
        str(out),
        "--set",
        "train.progress=false",
        "--set",
        f"train.threads={threads}",
    ]
    if (out / CHECKPOINT).is_file():
        cmd.append("--resume")
    else:
        cmd += ["--recipe", str(recipe), *extra]
        if out.is_dir() and any(out.iterdir()):
            cmd.append("--overwrite")  # what a start that never reached a checkpoint left
        cmd += [a for s in sets for a in ("--set", s)]
    out.parent.mkdir(parents=True, exist_ok=True)
    logfile = out.parent / f"{out.name}.log"
    with open(logfile, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        with _running_lock:
            _running.add(proc)
        try:
            code = proc.wait()
        finally:
            with _running_lock:
                _running.discard(proc)
    if code != 0:
        tail = logfile.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise ConfigError(f"sweep point {out.name} failed (exit {code}): {tail[0]}; see {logfile}")
    log(f"finished {out.name}")
    return read_summary(out, SUMMARY_KEYS, flag="sweep point")


def check_points(recipe: Path, out: Path, points: list[tuple[str, list[str]]]) -> None:
    """Before anything is trained: every point's recipe is valid, and every point already in
    ``out`` was made with the recipe this sweep gives it."""
    if not Path(recipe).is_file():
        raise ConfigError(f"--recipe: recipe file not found: {recipe}")
    check_output_dir(out, flag="--out", runs_inside=True)
    for name, sets in points:
        try:
            want = load_recipe(recipe, sets)
        except ConfigError as e:
            raise ConfigError(f"sweep point {name}: {e}") from None
        point = Path(out) / name
        if point.exists() and not point.is_dir():
            raise ConfigError(
                f"--out {out}: {point} is in the way of point {name} (not a directory)"
            )
        if is_run_dir(point) and (point / RECIPE).is_file():
            diff = recipe_differences(read_run_recipe(point), want)
            if diff:
                key, old, new = diff[0]
                raise ConfigError(
                    f"--out {out}: point {name} was trained with {key}={old}, this sweep gives "
                    f"{key}={new}; choose another --out, or remove {point} to train it again"
                )


def sweep(
    recipe: Path,
    out: Path,
    points: list[tuple[str, list[str]]],
    *,
    jobs: int = 1,
    threads: int | None = None,
    log=print,
) -> dict[str, dict[str, Any]]:
    """Run every point and write ``OUT/sweep.json`` (summaries without per-layer rows).

    A failed point stops nothing else: the others are trained, then the failures are one
    ConfigError. An interrupt stops the running points (each keeps its last checkpoint) and
    starts no other."""
    if not points:
        raise ConfigError("sweep: no points to train")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs: must be an integer >= 1, got {jobs!r}")
    check_points(recipe, out, points)
    threads = threads or max(1, 2 // jobs)
    results: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    pool = ThreadPoolExecutor(jobs)
    stops = Stops(started=True)  # SIGTERM stops the points like Ctrl-C, never orphans them
    try:
        stops.__enter__()
        futures = {
            pool.submit(run_point, recipe, out / name, sets, threads, log): name
            for name, sets in points
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
            for future in done:
                try:
                    summary = future.result()
                except ConfigError as e:
                    failures.append(str(e))
                    continue
                results[futures[future]] = {k: v for k, v in summary.items() if k != "layers"}
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        _stop_running()
        raise
    finally:
        stops.__exit__()
    pool.shutdown()
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise ConfigError(f"{failures[0]}{more}; {AGAIN}")
    ordered = {name: results[name] for name, _ in points}
    atomic_write_text(out / "sweep.json", json.dumps(ordered, indent=2) + "\n")
    return ordered


def _stop_running() -> None:
    """Interrupt the points being trained (they keep their checkpoints) and wait for them."""
    with _running_lock:
        procs = list(_running)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def sweep_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per point: method, structure, target, achieved, top-1 (and vs dense), time."""
    base = next((r["top1"] for r in results.values() if r["method"] == "dense"), None)
    rows = []
    for name, r in results.items():
        delta = f"{r['top1'] - base:+.2f}" if base is not None else "-"
        rows.append(
            [
                name,
                r["method"],
                r["structure"],
                f"{r['target']:.2f}",
                f"{r['sparsity']:.4f}",
                f"{r['top1']:.2f}",
                delta,
                f"{r['wall_time']:.0f}",
            ]
        )
    return format_table(
        rows, ["run", "method", "structure", "target", "achieved", "top-1", "vs dense", "wall s"]
    )
