"""``sparsegrain report DIR...``: PNG plots and a Markdown report over finished runs.

Reads each run's ``summary.json``, its ``analysis.json`` when ``sparsegrain analyze`` has been run,
and its ``masks.safetensors``. Plots: accuracy vs achieved sparsity per structure (as in Mao et
al., arXiv 1705.08922, fig. 3), compression ratio and SCNN-like memory references per run (our
reconstruction of the accelerator model), per-layer sparsity bars, and a picture of the mask of
a few filters.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.io import atomic_write, atomic_write_text, load_tensors
from ..methods import METHODS, Method
from ..runs.files import ANALYSIS, MASKS
from ..runs.records import NUMBER, check_output_dir, read_json, read_summary, require


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


SUMMARY_KEYS = ("method", "structure", "target", "sparsity", "top1", "layers")
LAYER_KEYS = ("name", "target", "achieved")
# What the report reads of an analysis.json.
ANALYSIS_KEYS = (
    "storage.total.ratio",
    *(f"accelerator.total.{k}" for k in ("weight", "index", "activation", "accumulator", "total")),
)


def load_runs(dirs: list[str]) -> list[dict[str, Any]]:
    """Each run's summary (and analysis.json where there is one), every key the report uses
    checked; two runs of one name would draw over each other's plots and are refused."""
    runs = []
    for d in dirs:
        path = Path(d)
        if not (path / "summary.json").is_file():
            raise ConfigError(f"report: {path} has no summary.json; is it a finished run?")
        run = {
            "dir": path,
            "name": path.name,
            "summary": read_summary(path, SUMMARY_KEYS, LAYER_KEYS, flag="report:"),
        }
        if (path / ANALYSIS).is_file():
            record = read_json(path / ANALYSIS, "analysis")
            for key in ANALYSIS_KEYS:
                require(record, key, NUMBER, path / ANALYSIS)
            run["analysis"] = record
        runs.append(run)
    if not runs:
        raise ConfigError("report: give at least one run directory")
    seen: dict[str, Path] = {}
    for r in runs:
        if r["name"] in seen:
            raise ConfigError(
                f"report: two runs are named '{r['name']}' ({seen[r['name']]} and {r['dir']}); "
                "their plots would have one file name: give each run once, with distinct names"
            )
        seen[r["name"]] = r["dir"]
    return runs


def _save(fig, path: Path) -> None:
    """A figure as PNG, drawn in memory and written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    atomic_write(path, buf.getvalue())


DEFAULT_SCORE = Method.default_score

# Other method names that runs of PyTorch's tools carry in results files (bench/results/
# peers.json): read as the method that runs the same pruning.
TOOL_RUN_NAMES = {
    "torch.ao WeightNorm block1x4": "torch-ao",
    "torch.ao WeightNorm 2:4": "torch-ao",
    "torch.ao WeightNorm fine": "torch-ao",
    "torch.nn.utils.prune global L1": "torch-prune",
}


def method_label(summary: dict) -> str:
    """A run's method for tables and plots, with the settings that make it another
    configuration when they are not the method's default: its scope (``campfire (global)``) and
    its ranking score (``campfire (l2)``), so such runs are not averaged together. A method whose
    masks a PyTorch tool chooses is named after the tool (``torch.ao WeightNorm block1x4``)."""
    method = TOOL_RUN_NAMES.get(summary["method"], summary["method"])
    cls = METHODS.get(method) if method in METHODS else None
    label_of = getattr(cls, "table_label", None)
    label = label_of(summary["structure"]) if label_of else summary["method"]
    extra = []
    if cls is not None and summary.get("scope") not in (None, _default(cls, "scope", "layer")):
        extra.append(summary["scope"])
    score = _default(cls, "score", DEFAULT_SCORE)
    if summary.get("score", score) != score:
        extra.append(summary["score"])
    return f"{label} ({', '.join(extra)})" if extra else label


def is_tool_run(summary: dict) -> bool:
    """True when a PyTorch pruning tool chose the run's masks (``torch-ao``, ``torch-prune``)."""
    method = TOOL_RUN_NAMES.get(summary["method"], summary["method"])
    return method in METHODS and bool(getattr(METHODS.get(method), "tool", ""))


def _default(cls, key: str, fallback: str) -> str:
    """The method's own default scope or score (``default_scope``, ``default_score``)."""
    return getattr(cls, f"default_{key}", fallback) if cls is not None else fallback


def accuracy_series(runs) -> tuple[list[float], dict[str, list[tuple[float, float, float, float]]]]:
    """The quality plot's data: dense top-1s, and per ``method: structure`` one point per
    target, ``(mean achieved sparsity, mean top-1, min top-1, max top-1)`` over the runs of
    that target (seeds), sorted by sparsity."""
    dense: list[float] = []
    groups: dict[str, dict[float, list[dict]]] = {}
    for r in runs:
        s = r["summary"]
        if s["method"] == "dense":
            dense.append(s["top1"])
            continue
        key = _series_key(s)
        groups.setdefault(key, {}).setdefault(round(s["target"], 4), []).append(s)
    series = {}
    for key, by_target in sorted(groups.items()):
        pts = []
        for rs in by_target.values():
            top1 = [x["top1"] for x in rs]
            sparsity = sum(x["sparsity"] for x in rs) / len(rs)
            pts.append((sparsity, sum(top1) / len(top1), min(top1), max(top1)))
        series[key] = sorted(pts)
    return dense, series


def _series_key(summary: dict) -> str:
    return f"{method_label(summary)}: {summary['structure']}"


def plot_accuracy(runs, path: Path) -> None:
    """Top-1 vs achieved sparsity, one line per method and structure; with several runs of a
    target (seeds) the point is their mean and the bar their min-max."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    dense, series = accuracy_series(runs)
    own = {
        _series_key(r["summary"])
        for r in runs
        if r["summary"]["method"] in METHODS and not is_tool_run(r["summary"])
    }
    if dense:
        mean = sum(dense) / len(dense)
        ax.axhline(mean, color="grey", ls="--", lw=1, label=f"dense ({len(dense)} run(s))")
    colors = plt.get_cmap("tab10" if len(series) <= 10 else "tab20").colors  # one per line
    for i, (key, pts) in enumerate(series.items()):
        x = [p[0] for p in pts]
        y = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        # sparsegrain's methods solid, PyTorch's tools and others' dashed
        style = {"marker": "o"} if key in own else {"marker": "s", "linestyle": "--"}
        color = colors[i % len(colors)]
        ax.errorbar(x, y, yerr=err, capsize=3, label=key, color=color, **style)
    ax.set_xlabel("achieved sparsity (pruned layers)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("accuracy vs sparsity per method and structure")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _label(r) -> str:
    s = r["summary"]
    return "dense" if s["method"] == "dense" else f"{s['structure']}@{s['sparsity']:.2f}"


def plot_analysis(runs, path_ratio: Path, path_refs: Path) -> bool:
    """Compression ratio and memory references per run (runs with analysis.json only)."""
    done = [r for r in runs if "analysis" in r]
    if not done:
        return False
    plt = _pyplot()
    labels = [_label(r) for r in done]
    fig, ax = plt.subplots(figsize=(max(4, len(done)), 3.5))
    ax.bar(labels, [r["analysis"]["storage"]["total"]["ratio"] for r in done])
    ax.set_ylabel("compression ratio vs dense fp32")
    ax.set_title("storage with index overhead (best encoding per layer)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    _save(fig, path_ratio)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(4, len(done)), 3.5))
    bottom = [0.0] * len(done)
    for key in ("weight", "index", "activation", "accumulator"):
        vals = [float(r["analysis"]["accelerator"]["total"][key]) for r in done]
        ax.bar(labels, vals, bottom=bottom, label=key)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("memory references per example")
    ax.set_title("SCNN-like model (our reconstruction)")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    _save(fig, path_refs)
    plt.close(fig)
    return True


def plot_layers(run, path: Path) -> None:
    plt = _pyplot()
    rows = run["summary"]["layers"]
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(rows)), 3.5))
    x = range(len(rows))
    ax.bar(x, [r["achieved"] for r in rows], label="achieved")
    ax.scatter(x, [r["target"] for r in rows], color="k", marker="_", s=80, label="target")
    ax.set_xticks(list(x), [r["name"] for r in rows], rotation=90, fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity")
    ax.set_title(f"{run['name']}: per-layer sparsity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def mask_picture(mask: torch.Tensor, filters: int = 8, kernels: int = 16) -> torch.Tensor:
    """Image of the first ``filters`` filters x ``kernels`` kernels of a (K, C, R, S) mask: each
    kernel an R x S tile (1 kept, 0 pruned), tiles separated by 0.5 lines."""
    m = mask.reshape(mask.shape[0], mask.shape[1], *(mask.shape[2:] or (1, 1)))
    if m.dim() == 3:
        m = m.unsqueeze(2)
    k, c, r, s = m.shape[0], m.shape[1], m.shape[2], m.shape[3]
    k, c = min(k, filters), min(c, kernels)
    img = torch.full((k * (r + 1) - 1, c * (s + 1) - 1), 0.5)
    for i in range(k):
        for j in range(c):
            img[i * (r + 1) : i * (r + 1) + r, j * (s + 1) : j * (s + 1) + s] = m[i, j].float()
    return img


def plot_masks(run, path: Path) -> bool:
    masks_file = run["dir"] / MASKS
    if not masks_file.is_file():
        return False
    masks, _ = load_tensors(masks_file, "masks")
    convs = [(n, m) for n, m in masks.items() if m.dim() == 4]
    if not convs:
        return False
    plt = _pyplot()
    shown = convs[:3]
    fig, axes = plt.subplots(len(shown), 1, figsize=(6, 2.2 * len(shown)), squeeze=False)
    for ax, (name, m) in zip(axes[:, 0], shown):
        ax.imshow(mask_picture(m).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{name}: first filters (rows) x kernels (cols); white kept", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def write_report(dirs: list[str], out: str | Path) -> Path:
    """Draw every plot into ``out`` and write ``out/report.md`` linking them; the runs and the
    directory are checked before anything is drawn."""
    out = check_output_dir(out, flag="--out")
    runs = load_runs(dirs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create it ({e.strerror})") from None
    lines = [
        "# sparsegrain report",
        "",
        "| run | method | structure | target | achieved | top-1 | compression | memory refs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s, a = r["summary"], r.get("analysis")
        ratio = f"{a['storage']['total']['ratio']:.2f}x" if a else "-"
        refs = f"{float(a['accelerator']['total']['total']):.3g}" if a else "-"
        lines.append(
            f"| {r['name']} | {s['method']} | {s['structure']} | {s['target']:.2f} | "
            f"{s['sparsity']:.4f} | {s['top1']:.2f} | {ratio} | {refs} |"
        )
    plot_accuracy(runs, out / "accuracy_vs_sparsity.png")
    lines += ["", "![accuracy vs sparsity](accuracy_vs_sparsity.png)"]
    if plot_analysis(runs, out / "compression.png", out / "memory_refs.png"):
        lines += [
            "",
            "![compression ratio](compression.png)",
            "",
            "![memory references (SCNN-like model, our reconstruction)](memory_refs.png)",
        ]
    for r in runs:
        plot_layers(r, out / f"layers_{r['name']}.png")
        lines += ["", f"## {r['name']}", "", f"![per-layer sparsity](layers_{r['name']}.png)"]
        if plot_masks(r, out / f"masks_{r['name']}.png"):
            lines += ["", f"![masks](masks_{r['name']}.png)"]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"
