"""``sparsegrain sweep``: one recipe, a grid of methods x structures x sparsities, one table.

Each point is an ordinary run directory ``OUT/<method>-<structure>-<target>`` trained in its own
process (``--jobs`` at a time, the cores split between them). Finished points are reused and
interrupted ones resumed, so a sweep can be started again after a stop.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.io import atomic_write_text
from ..core.tables import format_table


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
    summary = out / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
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
    if (out / "checkpoint.safetensors").is_file():
        cmd.append("--resume")
    else:
        cmd += ["--recipe", str(recipe), "--overwrite", *extra]
        cmd += [a for s in sets for a in ("--set", s)]
    out.parent.mkdir(parents=True, exist_ok=True)
    logfile = out.parent / f"{out.name}.log"
    with open(logfile, "a") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        tail = logfile.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise ConfigError(f"sweep point {out.name} failed (exit {code}): {tail[0]}; see {logfile}")
    log(f"finished {out.name}")
    return json.loads(summary.read_text())


def sweep(
    recipe: Path,
    out: Path,
    points: list[tuple[str, list[str]]],
    *,
    jobs: int = 1,
    threads: int | None = None,
    log=print,
) -> dict[str, dict[str, Any]]:
    """Run every point and write ``OUT/sweep.json`` (summaries without per-layer rows)."""
    if not Path(recipe).is_file():
        raise ConfigError(f"recipe file not found: {recipe}")
    threads = threads or max(1, 2 // max(jobs, 1))
    results: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        futures = {
            pool.submit(run_point, recipe, out / name, sets, threads, log): name
            for name, sets in points
        }
        for future in as_completed(futures):
            summary = future.result()
            results[futures[future]] = {k: v for k, v in summary.items() if k != "layers"}
    ordered = {name: results[name] for name, _ in points}
    atomic_write_text(out / "sweep.json", json.dumps(ordered, indent=2) + "\n")
    return ordered


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
