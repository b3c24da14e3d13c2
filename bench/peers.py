"""Train the pruning tools PyTorch itself ships on exactly sparsegrain's budget, for one table.

Reproduce (reference budget, about 17 minutes a run alone on 2 cores; 7 runs per seed):

    .venv/bin/python bench/peers.py --jobs 2 --seeds 0,1 --results bench/results/peers.json \\
        --compare bench/results/campfire_fmnist.json

``--quick`` runs the quick budget instead (20k-image subset, 4 epochs, pruning window scaled to
the shorter run, as ``bench/grid.py --quick``). Every run is ``sparsegrain train`` of the recipe
(default: the Campfire window recipe, whose ``start``/``end``/``frequency`` set the ramp: dense
for epoch 1, cubic ramp epochs 1..6 with a mask update every 100 steps, masks frozen from then
on) with the peer's method and structure set, in ``runs/peers/<budget>/<name>/``; finished runs
are reused and interrupted ones resumed (``sparsegrain.train.sweep.run_point``), and
``--table-only`` only rebuilds the table from ``--results``. The peers, methods of sparsegrain
whose masks the PyTorch tool chooses (``sparsegrain.methods.torch_ao``, ``torch_prune``):

- ``ao-block1x4``: ``method: torch-ao, structure: block:1x4``:
  ``torch.ao.pruning.WeightNormSparsifier(sparse_block_shape=(1, 4))``, whole 1x4 blocks of the
  GEMM view zeroed, lowest mean square first, per layer;
- ``ao-nm2:4``: ``structure: nm:2:4``: the same with ``zeros_per_block=2`` and the level ramped
  to 1, every 1x4 block ends 2:4 (50%: this peer has one target);
- ``ao-fine``: ``structure: fine``, ``sparse_block_shape=(1, 1)`` (not in the default set);
- ``prune-global``: ``method: torch-prune``: ``torch.nn.utils.prune.global_unstructured`` with
  ``L1Unstructured``, one threshold across layers, the increment that brings the total to the
  cubic target at every mask update.

Everything else is the recipe's: data, model, optimizer, LR schedule, seed, channels_last, the
pruned layers (every Conv/Linear but the first conv and the classifier) and the loop.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from grid import quick_sets, record

from sparsegrain.analysis.compare import table, verdict
from sparsegrain.core.errors import ConfigError
from sparsegrain.recipe.load import read_yaml
from sparsegrain.train.sweep import run_point

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "resnet20_fmnist_campfire_window_70.yaml"
TARGETS = (0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Peer:
    method: str  # sparsegrain's method running the tool
    structure: str
    fixed_target: float | None = None  # N:M: the structure sets the sparsity


PEERS = {
    "ao-block1x4": Peer("torch-ao", "block:1x4"),
    "ao-nm2:4": Peer("torch-ao", "nm:2:4", 0.5),
    "ao-fine": Peer("torch-ao", "fine"),
    "prune-global": Peer("torch-prune", "fine"),
}
DEFAULT_PEERS = ("ao-block1x4", "ao-nm2:4", "prune-global")


def plan(
    peers: list[str], targets: list[float], seeds: list[int]
) -> list[tuple[str, str, float, int]]:
    """``(run name, peer, target, seed)`` of every run; N:M peers run their one target only."""
    runs = []
    for key in peers:
        peer = PEERS[key]
        for target in [peer.fixed_target] if peer.fixed_target is not None else targets:
            for seed in seeds:
                name = f"{key.replace(':', '-')}_{round(target * 100)}_s{seed}"
                runs.append((name, key, target, seed))
    return runs


def overrides(args, key: str, target: float, seed: int) -> list[str]:
    """The ``--set`` overrides of one run of the recipe."""
    peer = PEERS[key]
    quick = quick_sets(read_yaml(args.recipe)) if args.quick else []
    return quick + [
        f"train.seed={seed}",
        f"sparsity.method={peer.method}",
        f"sparsity.structure={peer.structure}",
        f"sparsity.target={target}",
        "sparsity.fallback=error",
        *args.set,
    ]


def run_all(args, runs, threads: int) -> dict[str, dict]:
    """Train (or reuse) every run, adding each summary to ``--results``; all results."""
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    out = args.out / ("quick" if args.quick else "reference")
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            pool.submit(
                run_point, args.recipe, out / name, overrides(args, key, target, seed), threads,
                lambda m: print(m, flush=True),
            ): name
            for name, key, target, seed in runs
        }  # fmt: skip
        for future in as_completed(futures):
            name = futures[future]
            summary = {k: v for k, v in future.result().items() if k != "layers"}
            results = record(args.results, name, {**summary, "name": name})
    return results


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", default=",".join(DEFAULT_PEERS), help=f"from: {', '.join(PEERS)}")
    p.add_argument("--targets", default=",".join(map(str, TARGETS)), help="final sparsities")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (train.seed)")
    p.add_argument("--recipe", type=Path, default=RECIPE, help="budget and ramp to follow")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "peers")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON file of summaries "
        "(default: bench/results/peers.json, peers_quick.json with --quick)",
    )
    p.add_argument("--compare", type=Path, nargs="*", default=[], help="grid.py results to add")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (subprocesses)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--quick", action="store_true", help="quick budget (smoke check)")
    p.add_argument("--set", action="append", default=[], help="extra recipe override")
    p.add_argument("--table-only", action="store_true", help="print the table of --results")
    args = p.parse_args()
    if args.results is None:
        name = "peers_quick.json" if args.quick else "peers.json"
        args.results = ROOT / "bench" / "results" / name
    return args


def main() -> None:
    args = parse_args()
    peers = [x for x in args.peers.split(",") if x]
    unknown = [x for x in peers if x not in PEERS]
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown}; choose from: {', '.join(PEERS)}")
    targets = [float(x) for x in args.targets.split(",") if x]
    seeds = [int(x) for x in args.seeds.split(",") if x]
    if args.table_only:
        results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    else:
        threads = args.threads or max(1, 2 // args.jobs)
        results = run_all(args, plan(peers, targets, seeds), threads)
    shown = dict(results)
    for path in args.compare:
        if not path.is_file():
            print(f"--compare: {path} does not exist yet, left out", file=sys.stderr)
            continue
        shown.update(json.loads(path.read_text()))
    print(table(shown))
    print()
    print(verdict(shown))


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:  # a bad --set, recipe or flag, or a failed run: one line
        sys.exit(f"error: {e}")
