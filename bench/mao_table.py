"""Table of the granularity study: accuracy, storage with index overhead, memory references.

Usage: .venv/bin/python bench/mao_table.py RUN_DIR...   (each analyzed by `sparsegrain analyze`;
bench/mao_study.sh runs the whole study). Memory references come from our SCNN-like model, a
reconstruction, not Mao et al.'s numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(run: Path) -> str:
    s = json.loads((run / "summary.json").read_text())
    a = json.loads((run / "analysis.json").read_text())
    st = a["storage"]["total"]
    refs = a["accelerator"]["total"]
    index_refs = float(refs["index"])
    structure = "dense" if s["method"] == "dense" else s["structure"]
    return (
        f"| {structure} | {s['sparsity']:.3f} | {s['top1']:.2f} | {st['best'] / 8192:.1f} | "
        f"{st['ratio']:.2f}x | {st['bound'] / 8192:.1f} | {float(refs['total']):.3g} | "
        f"{index_refs:.3g} | {float(refs['weight']):.3g} |"
    )


def main(dirs: list[str]) -> None:
    print(
        "| structure | achieved | top-1 | storage KiB (best) | ratio vs fp32 | bound KiB | "
        "memory refs | index refs | weight refs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for d in dirs:
        if (Path(d) / "analysis.json").is_file():
            print(row(Path(d)))


if __name__ == "__main__":
    main(sys.argv[1:])
