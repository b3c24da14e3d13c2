"""Comparison tables of run summaries: methods side by side per target, and the verdict of
PyTorch's own pruning tools (``torch-ao``, ``torch-prune``) against sparsegrain's best.

Both read ``summary.json`` records (or results files of them, keyed by run name) and group runs
by ``report.method_label``, so seeds of one configuration are averaged and a non-default score
or scope is its own row.
"""

from __future__ import annotations

import statistics

from .report import is_tool_run, method_label

TABLE_HEAD = [
    "| method | structure | target | achieved | top-1 mean (min-max) | vs dense | seeds "
    "| top-5 | wall s |",
    "|---|---|---|---|---|---|---|---|---|",
]
VERDICT_HEAD = [
    "| structure | target | sparsegrain's best | peer | peer - best | seed spread | verdict |",
    "|---|---|---|---|---|---|---|",
]


def table(results: dict[str, dict]) -> str:
    """One row per (method, structure, target): top-1 mean (min-max over seeds), achieved
    sparsity, wall time; sorted by target, then top-1."""
    groups: dict[tuple, list[dict]] = {}
    for r in results.values():
        groups.setdefault((method_label(r), r["structure"], round(r["target"], 4)), []).append(r)
    dense = [r["top1"] for (m, _, _), rs in groups.items() if m == "dense" for r in rs]
    base = statistics.mean(dense) if dense else None
    order = sorted(
        groups.items(), key=lambda kv: (kv[0][2], -statistics.mean(r["top1"] for r in kv[1]))
    )
    rows = list(TABLE_HEAD)
    for (method, structure, target), rs in order:
        top1 = [r["top1"] for r in rs]
        mean = statistics.mean(top1)
        spread = f" ({min(top1):.2f}-{max(top1):.2f})" if len(top1) > 1 else ""
        delta = f"{mean - base:+.2f}" if base is not None else ""
        rows.append(
            f"| {method} | {structure} | {target:.2f} | "
            f"{statistics.mean(r['sparsity'] for r in rs):.4f} | {mean:.2f}{spread} | {delta} | "
            f"{len(rs)} | {statistics.mean(r['top5'] for r in rs):.2f} | "
            f"{statistics.mean(r['wall_time'] for r in rs):.0f} |"
        )
    return "\n".join(rows)


def verdict(results: dict[str, dict]) -> str:
    """The bar of the quality table, per structure and target where a PyTorch tool (the peer)
    ran: the peer's mean top-1 against sparsegrain's best mean at the same structure and target,
    and the seed spread (the wider min-max range over seeds of the two). Either side is ahead
    beyond the spread, within it, or on one seed (spread unknown); a peer ahead beyond it breaks
    the bar (bold)."""
    peers = {method_label(r) for r in results.values() if is_tool_run(r)}
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in results.values():
        key = (r["structure"], round(r["target"], 2))
        groups.setdefault(key, {}).setdefault(method_label(r), []).append(r["top1"])
    rows = list(VERDICT_HEAD)
    for (structure, target), methods in sorted(
        groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])
    ):
        ours = {m: v for m, v in methods.items() if m not in peers and m != "dense"}
        if not ours:
            continue
        best = max(ours, key=lambda m: statistics.mean(ours[m]))
        for peer in sorted(m for m in methods if m in peers):
            rows.append(_verdict_row(structure, target, best, ours[best], peer, methods[peer]))
    return "\n".join(rows)


def _verdict_row(structure, target, best, b: list[float], peer, a: list[float]) -> str:
    diff = statistics.mean(a) - statistics.mean(b)
    spread = max(max(a) - min(a), max(b) - min(b))
    seeded = min(len(a), len(b)) > 1
    spread_s = f"{spread:.2f}" if seeded else "-"
    return (
        f"| {structure} | {target:.2f} | {best} {statistics.mean(b):.2f} "
        f"(n={len(b)}) | {peer} {statistics.mean(a):.2f} (n={len(a)}) | "
        f"{diff:+.2f} | {spread_s} | {judge(diff, spread, seeded)} |"
    )


def judge(diff: float, spread: float, seeded: bool) -> str:
    """The verdict word of a peer ``diff`` points of top-1 ahead of sparsegrain's best."""
    who = "peer" if diff > 0 else "sparsegrain"
    if abs(diff) < 0.005:  # top-1 is given to 0.01
        return "level"
    if not seeded:
        return f"{who} ahead, one seed: spread unknown"
    if abs(diff) <= spread:
        return f"{who} ahead within the seed spread"
    if diff < 0:
        return "sparsegrain ahead beyond the seed spread"
    return "**peer ahead beyond the seed spread**"  # the bar is broken
