"""Train a list of recipes (in parallel lanes), collect their summaries and print one table.

Reproduce the Campfire table of BENCHMARKS.md (reference budget, about 12 minutes a run alone
on 2 cores):

    .venv/bin/python bench/grid.py --jobs 2 --results bench/results/campfire_fmnist.json \\
        recipes/resnet20_fmnist_dense.yaml recipes/resnet20_fmnist_campfire_*.yaml

``--quick`` runs the quick budget instead (20k-image subset, 4 epochs, pruning window scaled to
the shorter run). Finished runs are reused, interrupted ones resumed, so the command can be run
again after a stop. Results (one summary per recipe) are kept as JSON so the table can be
rebuilt with ``--table-only``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from sparsegrain.recipe.load import read_yaml
from sparsegrain.train.sweep import run_point

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["data.train_subset=20000", "train.epochs=4"]


def quick_sets(recipe: dict) -> list[str]:
    sets = list(QUICK)
    sp = recipe.get("sparsity", {})
    epochs = recipe.get("train", {}).get("epochs", 10)
    if sp.get("method", "dense") != "dense":
        scale = 4 / epochs
        sets += [
            f"sparsity.start={sp.get('start', 0) * scale:g}",
            f"sparsity.end={sp.get('end', 0) * scale:g}",
        ]
    return sets


def record(path: Path, name: str, summary: dict) -> dict[str, dict]:
    """Add one summary to the results file; other grids may write the same file at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.is_file() else {}
        results[name] = summary
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    return results


def table(results: dict[str, dict]) -> str:
    dense = [r for r in results.values() if r["method"] == "dense"]
    base = dense[0]["top1"] if dense else None
    rows = [
        "| recipe | method | structure | target | achieved | top-1 | vs dense | top-5 | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        delta = f"{r['top1'] - base:+.2f}" if base is not None else ""
        rows.append(
            f"| {name} | {r['method']} | {r['structure']} | {r['target']:.2f} | "
            f"{r['sparsity']:.4f} | {r['top1']:.2f} | {delta} | {r['top5']:.2f} | "
            f"{r['wall_time']:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="*", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "grid")
    p.add_argument("--results", type=Path, required=True, help="JSON file of summaries")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--quick", action="store_true", help="quick budget (smoke check)")
    p.add_argument("--set", action="append", default=[], help="extra override for every run")
    p.add_argument("--tag", default="", help="suffix of the run names and result keys")
    p.add_argument("--table-only", action="store_true", help="print the table of --results")
    p.add_argument(
        "--init", type=Path, default=None, help="--init of every run (a run dir or weights file)"
    )
    args = p.parse_args()
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    if not args.table_only:
        threads = args.threads or max(1, 2 // args.jobs)
        out = args.out / ("quick" if args.quick else "reference")

        def job(recipe: Path) -> tuple[str, dict]:
            data = read_yaml(recipe)
            sets = (quick_sets(data) if args.quick else []) + args.set
            name = recipe.stem + args.tag
            extra = ["--init", str(args.init)] if args.init else []
            return name, run_point(
                recipe, out / name, sets, threads, lambda m: print(m, flush=True), extra
            )

        with ThreadPoolExecutor(args.jobs) as pool:
            for future in as_completed([pool.submit(job, r) for r in args.recipes]):
                name, summary = future.result()
                summary = {k: v for k, v in summary.items() if k != "layers"}
                results = record(args.results, name, summary)
    print(table(dict(sorted(results.items()))))


if __name__ == "__main__":
    sys.exit(main())
