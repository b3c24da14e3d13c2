"""Run summaries: ``summary.json`` contents and the table printed at the end of a run."""

from __future__ import annotations

from typing import Any


def overall_sparsity(rows: list[dict[str, Any]]) -> float:
    """Achieved sparsity over the pruned layers (those with a structure), weighted by size."""
    pruned = [r for r in rows if r["structure"] != "dense"]
    total = sum(r["params"] for r in pruned)
    return sum(r["achieved"] * r["params"] for r in pruned) / total if total else 0.0


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), line.format(*["-" * w for w in widths])]
    out += [line.format(*[str(x) for x in r]) for r in rows]
    return "\n".join(out)


def format_summary(summary: dict[str, Any]) -> str:
    """Per-layer table and the headline figures of a run."""
    rows = [
        [
            r["name"],
            "x".join(map(str, r["shape"])),
            r["structure"],
            f"{r['target']:.3f}",
            f"{r['achieved']:.3f}",
            r.get("note", ""),
        ]
        for r in summary["layers"]
    ]
    table = format_table(rows, ["layer", "shape", "structure", "target", "achieved", "note"])
    head = (
        f"method {summary['method']}  structure {summary['structure']}  "
        f"target {summary['target']:.3f}  achieved {summary['sparsity']:.4f} (pruned layers)  "
        f"nonzero params {summary['params_nonzero']:,} / {summary['params_total']:,}"
    )
    tail = (
        f"top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  "
        f"epochs {summary['epochs']}  wall time {summary['wall_time']:.0f} s"
    )
    return "\n".join([table, "", head, tail])
