"""How the time of a mask update and of a global threshold grows with the number of weights.

Reproduce (CPU; a few minutes, ``--quick`` stops at 1M and takes well under one):

    .venv/bin/python bench/scaling.py --threads 1 [--quick]

The weights: the 18 3x3 convs of a ResNet-20 (three stages of six, widths w, 2w, 4w; the first
conv and the 1x1 shortcuts left out) at a width w chosen so that the total is near 0.3M, 1M, 4M
and 25M (w = 16, 32, 60, 156: 0.27M, 1.07M, 3.76M, 25.4M; w is a multiple of 4 so that nm:2:4
and blocks fit every layer). The layer count stays 18, so per-layer overheads are constant and
the growth is the per-weight cost. Random normal weights, seeded.

Timed, each for all layers together (median of ``--repeats`` after one warm-up):

- ``mask <structure>``: ``Structure.mask(w, s)`` of every layer (fine, vector, kernel, filter,
  window, kernel-quota, combined, nm:2:4, block:4x4 at s = 0.7, nm at 0.5): scores, the
  per-domain selection and the mask expansion, i.e. the core of one Campfire mask update;
- ``global_sparsities <structure>``: one threshold over the size-normalised group scores of all
  layers (``scope: global``), for fine (one group per weight: the largest selection), window,
  and ``kernel/fine`` (kernel on every other layer, fine on the rest: groups of 9 and of 1
  elements, the mixed-size case, ranked through a band) beside the same ranking by a full sort
  of every group (``full sort``); the two results are checked equal;
- ``exact_quantile`` (the 0.9 quantile of all |w|, by selection; Feather's threshold), and the
  same number by ``torch.quantile`` (refuses more than 2**24 elements) and ``torch.sort`` plus
  interpolation (the naive way); the three values are checked equal.

Printed: each time as a ratio to the smallest case (with the ratio of weights beside it: equal
ratios mean linear growth), and nanoseconds per weight. The ratios come from one run; absolute
ns depend on the machine and its load (give ``--threads 1`` on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sparsegrain.core.quantile import exact_quantile, quantile_rank
from sparsegrain.core.tables import format_table
from sparsegrain.structures import global_sparsities, parse_structure, select

WIDTHS = (16, 32, 60, 156)  # 0.27M, 1.07M, 3.76M, 25.4M weights
QUICK_MAX = 1_100_000
STRUCTURES = (
    "fine",
    "vector",
    "kernel",
    "filter",
    "window",
    "kernel-quota",
    "combined",
    "nm:2:4",
    "block:4x4",
)
GLOBAL = ("fine", "window")


def conv_shapes(w: int) -> list[tuple[int, int, int, int]]:
    """The 3x3 convs of a ResNet-20 at width ``w``: ``1044 * w**2`` weights in 18 layers."""
    shapes = []
    for stage, (k, c_in) in enumerate(((w, w), (2 * w, w), (4 * w, 2 * w))):
        for i in range(6):
            c = c_in if (stage > 0 and i == 0) else k
            shapes.append((k, c, 3, 3))
    return shapes


def make_layers(w: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(w)
    return {f"conv{i}": torch.randn(s, generator=g) for i, s in enumerate(conv_shapes(w))}


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sort_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Sort everything, then interpolate with the rank rule ``torch.quantile`` uses."""
    v = torch.sort(x).values
    lo, hi, weight = quantile_rank(x.numel(), q, x.dtype)
    return torch.lerp(v[lo], v[hi], weight)


def time_case(w: int, repeats: int, q: float = 0.9) -> tuple[int, dict[str, float | None]]:
    layers = make_layers(w)
    n = sum(t.numel() for t in layers.values())
    out: dict[str, float | None] = {}
    for spec in STRUCTURES:
        st = parse_structure(spec)
        s = 0.5 if spec.startswith("nm") else 0.7
        out[f"mask {spec}"] = median_time(
            lambda st=st, s=s: [st.mask(t, s) for t in layers.values()], repeats
        )
    for spec in GLOBAL:
        group = {name: (t, spec) for name, t in layers.items()}
        out[f"global_sparsities {spec}"] = median_time(
            lambda group=group: global_sparsities(group, 0.7), repeats
        )
    mixed = {
        name: (t, "kernel" if i % 2 == 0 else "fine") for i, (name, t) in enumerate(layers.items())
    }
    band = global_sparsities(mixed, 0.7)
    out["global_sparsities kernel/fine"] = median_time(
        lambda: global_sparsities(mixed, 0.7), repeats
    )
    sample, select.BAND_SAMPLE = select.BAND_SAMPLE, 1 << 62  # no band: sort every group
    try:
        if global_sparsities(mixed, 0.7) != band:
            raise SystemExit(f"n={n}: global_sparsities by band != by full sort")
        out["global_sparsities kernel/fine, full sort"] = median_time(
            lambda: global_sparsities(mixed, 0.7), repeats
        )
    finally:
        select.BAND_SAMPLE = sample
    x = torch.cat([t.reshape(-1) for t in layers.values()]).abs()
    ours = exact_quantile(x, q)
    if not torch.equal(ours, sort_quantile(x, q)):
        raise SystemExit(f"n={n}: exact_quantile != sort + interpolation")
    out["exact_quantile"] = median_time(lambda: exact_quantile(x, q), repeats)
    out["torch.sort + lerp"] = median_time(lambda: sort_quantile(x, q), repeats)
    if n <= 2**24:
        if not torch.equal(ours, torch.quantile(x, q)):
            raise SystemExit(f"n={n}: exact_quantile != torch.quantile")
        out["torch.quantile"] = median_time(lambda: torch.quantile(x, q), repeats)
    else:
        out["torch.quantile"] = None  # refuses more than 2**24 elements
    return n, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes up to 1M only (smoke check)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per case")
    ap.add_argument("--results", type=Path, default=None, help="also write the times as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    widths = [w for w in WIDTHS if not args.quick or 1044 * w * w <= QUICK_MAX]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    cases = [time_case(w, repeats) for w in widths]
    n0, t0 = cases[0]
    sizes = [f"{n / 1e6:.2f}M" for n, _ in cases]
    ratio_rows = [["weights (x smallest)"] + [f"{n / n0:.1f}" for n, _ in cases]]
    ns_rows = []
    for op in t0:
        ratio_rows.append([op] + [_ratio(t[op], t0[op]) for _, t in cases])
        ns_rows.append([op] + [_ns(t[op], n) for n, t in cases])
    print()
    print(f"Time over the {sizes[0]} case (linear growth = the weights row)")
    print(format_table(ratio_rows, ["operation", *sizes]))
    print()
    print("Nanoseconds per weight")
    print(format_table(ns_rows, ["operation", *sizes]))
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        data = {"threads": torch.get_num_threads(), "cases": [{"n": n, **t} for n, t in cases]}
        args.results.write_text(json.dumps(data, indent=2) + "\n")


def _ratio(t: float | None, base: float | None) -> str:
    return "refuses" if t is None else f"{t / base:.1f}" if base else ""


def _ns(t: float | None, n: int) -> str:
    return "refuses" if t is None else f"{t / n * 1e9:.2f}"


if __name__ == "__main__":
    main()
