"""What Feather costs per training step, and what the exact threshold costs by selection vs sorting.

Reproduce (CPU; a few minutes, ``--quick`` about one):

    .venv/bin/python bench/feather_overhead.py [--quick] [--threads N]

Part 1, per-step time of Feather training vs dense training of the same model, measured in one
run with the two interleaved (rounds of dense steps, then Feather steps), so that drift of the
machine's load hits both alike: ResNet-20 (width 16, 28x28, batch 128) and a ResNet-50 shaped
model (``resnet50``, small_input, 28x28, batch 8; 23.5M pruned weights). Feather runs at its
final sparsity (0.9, ``scope: global``) from the first step, so every step pays for the full
threshold selection; its time is split into forward+backward+SGD and ``sp.step()`` (the exact
global quantile and the masks).

Part 2, time of the exact threshold (the 0.9 quantile of |w|, linear interpolation) on 0.3M, 1M,
4M and 25M values: ``exact_quantile`` (selection) vs ``torch.sort`` alone (the naive way's
floor) vs ``torch.quantile`` (refuses more than 2**24 elements) vs two ``torch.kthvalue`` calls.
Every method's value is checked to be the same number.

Only ratios measured in the same run are printed; absolute times depend on the machine. On a
machine whose cores are busy with other jobs, give ``--threads 1``: multi-threaded element-wise
passes then stall on every parallel region and the ratios say more about the scheduler than
about the code.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import sparsegrain
from sparsegrain.core.quantile import exact_quantile, quantile_rank
from sparsegrain.core.tables import format_table
from sparsegrain.models import create_model
from sparsegrain.train.loop import param_groups

MODELS = {
    "resnet20 w16 28px b128": ("resnet20", {"width": 16}, 1, 128),
    "resnet50 small 28px b8": ("resnet50", {"small_input": True}, 3, 8),
}
SIZES = [300_000, 1_000_000, 4_000_000, 25_000_000]


def make(name: str, options: dict, in_channels: int, feather: bool, steps_per_epoch: int):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=in_channels, **options)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, 5e-4, False), lr=0.01, momentum=0.9)
    cfg = (
        {"method": "feather", "structure": "fine", "target": 0.9, "scope": "global", "end": 0}
        if feather
        else {"method": "dense"}
    )
    sp = sparsegrain.sparsify_(model, cfg, steps_per_epoch=steps_per_epoch, optimizer=opt)
    return model, opt, sp


def timed_step(model, opt, sp, x, y) -> tuple[float, float]:
    """One step of the user loop; returns (forward+backward+SGD seconds, sp.step() seconds)."""
    t0 = time.perf_counter()
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    t1 = time.perf_counter()
    sp.step()
    return t1 - t0, time.perf_counter() - t1


def step_overhead(label: str, rounds: int, per_round: int) -> list[str]:
    name, options, in_channels, batch = MODELS[label]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, 28, 28, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g)
    runs = {
        kind: make(name, options, in_channels, kind == "feather", 10**6)
        for kind in ("dense", "feather")
    }
    pruned = sum(layer.param.numel() for layer in runs["feather"][2].pruned)
    for run in runs.values():  # warm-up
        timed_step(*run, x, y)
    times: dict[str, list[float]] = {"dense": [], "feather": [], "feather_sp": []}
    for _ in range(rounds):
        for kind, run in runs.items():
            for _ in range(per_round):
                train_s, sp_s = timed_step(*run, x, y)
                times[kind].append(train_s + sp_s)
                if kind == "feather":
                    times["feather_sp"].append(sp_s)
    dense = statistics.median(times["dense"])
    feather = statistics.median(times["feather"])
    sp_part = statistics.median(times["feather_sp"])
    return [
        label,
        f"{pruned / 1e6:.2f}M",
        str(len(times["dense"])),
        f"{feather / dense:.3f}",
        f"{(feather - sp_part) / dense:.3f}",
        f"{sp_part / dense:.3f}",
    ]


def best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def sort_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The naive way: sort everything, then interpolate (the same rank rule as exact_quantile)."""
    v = torch.sort(x).values
    lo, hi, w = quantile_rank(x.numel(), q, x.dtype)
    return torch.lerp(v[lo], v[hi], w)


def threshold_times(n: int, repeats: int, q: float = 0.9) -> list[str]:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g).abs()
    ours = exact_quantile(x, q)
    assert torch.equal(ours, sort_quantile(x, q)), f"n={n}: selection != sort"
    lo, hi, _ = quantile_rank(n, q, x.dtype)
    t_ours = best_of(lambda: exact_quantile(x, q), repeats)
    t_sort = best_of(lambda: torch.sort(x), repeats)
    t_kth = best_of(lambda: (torch.kthvalue(x, lo + 1), torch.kthvalue(x, hi + 1)), repeats)
    if n <= 2**24:
        assert torch.equal(ours, torch.quantile(x, q)), f"n={n}: selection != torch.quantile"
        quant = f"{best_of(lambda: torch.quantile(x, q), repeats) / t_ours:.1f}"
    else:
        quant = "refuses n > 2^24"
    return [f"{n / 1e6:g}M", f"{t_sort / t_ours:.1f}", quant, f"{t_kth / t_ours:.2f}"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (~1 minute)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, per_round, repeats = (2, 3, 2) if args.quick else (5, 4, 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print()
    rows = [
        step_overhead(label, rounds if "resnet20" in label else max(1, rounds // 2), per_round)
        for label in MODELS
    ]
    head = ["model", "pruned", "steps", "feather/dense", "  of which fwd+bwd+SGD", "  sp.step()"]
    print("Per-step time, Feather (s = 0.9, global) over dense, medians, same run")
    print(format_table(rows, head))
    print()
    rows = [threshold_times(n, repeats) for n in SIZES]
    head = ["|w| values", "torch.sort / ours", "torch.quantile / ours", "2x kthvalue / ours"]
    print("Exact 0.9 quantile (linear): time of each way over exact_quantile (>1: ours faster)")
    print(format_table(rows, head))


if __name__ == "__main__":
    main()
