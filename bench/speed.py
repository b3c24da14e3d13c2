"""Measured CPU latency of pruned models: dense vs physically compacted vs sparse kernels.

Reproduce (CPU; the full grid takes tens of minutes, ``--quick`` a few seconds):

    .venv/bin/python bench/speed.py [--quick] [--threads N] [--json bench/results/speed.json]
    .venv/bin/python bench/speed.py --models resnet50 --batches 1,32 --structures filter \\
        --targets 0.5 --repeats 7

Models: ResNet-20 (width 16, 28x28, 1 channel, 10 classes) and ResNet-50 v1.5 (224x224, 1000
classes) at batch 1 and 32, each pruned on its random init by one-shot magnitude pruning
(``sparsify_`` with method ``oneshot``, default layer exclusions: first conv and classifier)
and finalized: speed does not depend on training. For each (structure, target):

- **compact**: ``sparsegrain.deploy.compact.compact`` removes zeroed filters/channels (exact rule:
  ``deploy/compact/plan.py``); its speedup over the dense model is compared with the **ideal** one,
  dense MACs / compacted MACs (``analysis.flops``), as ``frac = speedup / ideal``;
- **kernels** (``sparsegrain.deploy.kernels.to_sparse_kernels``, skipped with ``--no-kernels``):
  the masked model with its layers of at least ``target - 0.05`` sparsity on sparse CPU kernels
  where they measured faster on the input they will run on.

Timing: every variant runs once per round, rounds interleaved (``--repeats`` of them, after a
warm-up), so a change of machine load hits all alike; each time is the median over rounds,
and every number printed is a ratio of two medians of the same run (``speedup = dense /
variant``). Absolute times depend on the machine and are not printed. Give ``--threads 1`` on a
machine whose cores are busy with other jobs.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from pathlib import Path

import torch
from torch.fx.experimental.optimization import fuse

import sparsegrain
from sparsegrain.core.tables import format_table
from sparsegrain.deploy.compact import compact
from sparsegrain.deploy.kernels import to_sparse_kernels
from sparsegrain.models import create_model

# name -> (zoo model, options, in_channels, classes, image size)
MODELS = {
    "resnet20": ("resnet20", {"width": 16}, 1, 10, 28),
    "resnet50": ("resnet50", {}, 3, 1000, 224),
}
QUICK_MODELS = {
    "resnet20": ("resnet20", {"width": 8}, 1, 10, 28),
    "resnet50": ("resnet50", {"width": 8, "small_input": True}, 3, 10, 32),
}


def pruned(spec, structure: str, target: float, seed: int = 0):
    name, options, channels, classes, _ = spec
    torch.manual_seed(seed)
    model = create_model(name, num_classes=classes, in_channels=channels, **options)
    # oneshot with start 0 prunes when attached; no training step follows, so any step count does
    handle = sparsegrain.sparsify_(
        model, {"method": "oneshot", "structure": structure, "target": target}, steps_per_epoch=1
    )
    handle.finalize()
    return model.eval()


def sparse_kernels(model, x, target: float):
    """``model`` with each layer of at least ``target - 0.05`` sparsity on a sparse kernel where
    one measured faster on ``x`` (a layer a little under the target still counts as pruned)."""
    return to_sparse_kernels(model, x, min_sparsity=max(0.0, target - 0.05))[0]


@torch.inference_mode()
def interleaved(
    variants: dict, x: torch.Tensor, repeats: int, min_time: float, rounds: dict | None = None
) -> dict:
    """Median seconds per forward of each variant, rounds interleaved; ``rounds``, when given,
    receives every round's time per variant (round ``i`` of each ran back to back)."""
    calls = {}
    for name, m in variants.items():  # warm-up, and calls per sample so each lasts >= min_time
        m(x)
        t0 = time.perf_counter()
        m(x)
        calls[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, m in variants.items():
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                m(x)
            times[name].append((time.perf_counter() - t0) / calls[name])
    if rounds is not None:
        rounds.update(times)
    return {name: statistics.median(ts) for name, ts in times.items()}


def keep_heap() -> bool:
    """Keep freed activation buffers in the process heap (glibc ``mallopt``), as a serving
    process would: by default glibc hands every buffer above 32 MiB back to the OS after each
    forward pass and page-faults it in again on the next, a cost proportional to activation
    bytes that is the same for a dense and a compacted model and hides the MAC savings."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))


def measure(spec, batch: int, structure: str, target: float, args) -> dict:
    size = spec[4]
    x = torch.randn(batch, spec[2], size, size)
    dense = pruned(spec, structure, target)
    res = compact(dense, x[:2])
    variants = {"dense": dense, "compact": res.model}
    if args.fuse_bn:  # the same inference rewrite on both: BN folded into the conv before it
        variants = {k: fuse(m) for k, m in variants.items()}
    if args.channels_last:
        variants = {k: m.to(memory_format=torch.channels_last) for k, m in variants.items()}
        x = x.contiguous(memory_format=torch.channels_last)
    if not args.no_kernels:  # chosen on the input it will run on
        variants["kernels"] = sparse_kernels(variants["dense"], x, target)
    with torch.inference_mode():
        ref = dense(x)
        diff = {k: float((m(x) - ref).abs().max()) for k, m in variants.items() if k != "dense"}
    med = interleaved(variants, x, args.repeats, args.min_time)
    row = {
        "structure": structure,
        "target": target,
        "ideal": res.macs_ratio,
        "params_ratio": res.params_before / res.params_after,
        "compact": med["dense"] / med["compact"],
        "max_abs_diff": diff,
    }
    row["frac_of_ideal"] = row["compact"] / row["ideal"]
    if "kernels" in med:
        row["kernels"] = med["dense"] / med["kernels"]
    return row


def table(rows: list[dict]) -> str:
    head = ["structure", "target", "ideal (MACs)", "compact", "frac of ideal", "kernels", "diff"]
    body = [
        [
            r["structure"],
            f"{r['target']:.2f}",
            f"{r['ideal']:.2f}x",
            f"{r['compact']:.2f}x",
            f"{r['frac_of_ideal']:.2f}",
            f"{r['kernels']:.2f}x" if "kernels" in r else "-",
            f"{max(r['max_abs_diff'].values()):.1e}",
        ]
        for r in rows
    ]
    return format_table(body, head)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models and settings: seconds")
    p.add_argument("--models", default="resnet20,resnet50")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--structures", default="filter,channel")
    p.add_argument("--targets", default="0.5,0.75")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds (median)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per timed sample")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=True, help="NHWC"
    )
    p.add_argument(
        "--fuse-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold BatchNorm into the conv before it (torch.fx fuse) in every variant",
    )
    p.add_argument(
        "--keep-heap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep freed buffers in the heap (glibc mallopt), see keep_heap()",
    )
    p.add_argument("--no-kernels", action="store_true", help="skip sparse-kernel execution")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args()
    models = QUICK_MODELS if args.quick else MODELS
    if args.quick:
        args.batches, args.structures, args.targets = "1,4", "filter", "0.5"
        args.repeats, args.min_time = min(args.repeats, 3), 0.02
    if args.threads:
        torch.set_num_threads(args.threads)
    heap = args.keep_heap and keep_heap()
    print(
        f"settings: channels_last={args.channels_last} fuse_bn={args.fuse_bn} "
        f"keep_heap={heap} threads={torch.get_num_threads()}"
    )
    out = []
    for name in args.models.split(","):
        spec = models[name]
        for batch in [int(b) for b in args.batches.split(",")]:
            rows = [
                measure(spec, batch, s, float(t), args)
                for s in args.structures.split(",")
                for t in args.targets.split(",")
            ]
            opts = ", ".join(f"{k}={v}" for k, v in spec[1].items())
            print(f"\n{name} ({opts}) {spec[4]}x{spec[4]}, batch {batch}, "
                  f"{torch.get_num_threads()} threads: speedup over dense")  # fmt: skip
            print(table(rows))
            out += [{"model": name, "options": spec[1], "batch": batch, **r} for r in rows]
    print(
        "\nideal = dense MACs / compacted MACs; frac = measured compact speedup / ideal; "
        "kernels = sparse-kernel model (masked weights) speedup; diff = max |out - dense out|"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        settings = {
            "quick": args.quick,
            "channels_last": args.channels_last,
            "fuse_bn": args.fuse_bn,
            "keep_heap": heap,
            "threads": torch.get_num_threads(),
        }
        Path(args.json).write_text(json.dumps({**settings, "rows": out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
