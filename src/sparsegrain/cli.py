"""Command line: a thin shell over the library. Mistakes print one line and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .core.errors import ConfigError, TrainingError
from .core.io import atomic_write_text

EPILOG = "Recipes: see recipes/ and README.md. Every key can be changed with --set key.sub=value."


def _train(args) -> int:
    from .recipe.load import load_recipe
    from .runs.files import read_run_recipe
    from .train.loop import run

    if args.resume:
        recipe = read_run_recipe(args.out)
        if args.recipe is not None or args.set:
            given = load_recipe(args.recipe or recipe, args.set)
            if given.to_dict() != recipe.to_dict():
                raise ConfigError(
                    f"--resume: the recipe differs from the one saved in {args.out}"
                    "/recipe.yaml; resume without --recipe/--set"
                )
    elif args.recipe is None:
        raise ConfigError("train: --recipe FILE is required (or --resume to continue a run)")
    else:
        recipe = load_recipe(args.recipe, args.set)
    run(recipe, args.out, resume=args.resume, overwrite=args.overwrite, init=args.init)
    return 0


def _eval(args) -> int:
    from .analysis.accuracy import evaluate
    from .core.tables import overall_sparsity
    from .data.catalog import build_data
    from .recipe.build import build_model
    from .runs.files import WEIGHTS, load_init, read_run_recipe

    recipe = read_run_recipe(args.run)
    data = build_data(recipe.data, seed=recipe.train.seed)
    model = build_model(recipe, data.num_classes, data.in_channels)
    load_init(model, str(Path(args.run) / WEIGHTS))
    res = evaluate(model, data.test)
    rows = _zero_report(model)
    res["sparsity_conv_linear"] = overall_sparsity(rows)
    print(
        json.dumps(res, indent=2)
        if args.json
        else f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
        f"zeros in Conv/Linear weights {res['sparsity_conv_linear']:.4f}"
    )
    return 0


def _analyze(args) -> int:
    from .analysis.analyze import AnalyzeOptions, analyze, load_subject, write

    attacks = [a for a in args.attacks.split(",") if a] if args.attacks else []
    for a in attacks:
        if a not in ("fgsm", "pgd"):
            raise ConfigError(f"--attacks: unknown attack '{a}'; choose from: fgsm, pgd")
    opts = AnalyzeOptions(
        value_bits=args.value_bits,
        index_bits=args.index_bits,
        attacks=attacks,
        epsilons=_floats("--epsilons", args.epsilons),
        pgd_steps=args.pgd_steps,
        sensitivity=args.sensitivity,
        sens_structure=args.sens_structure,
        max_batches=args.max_batches,
        progress=not args.no_progress,
    )
    subject = load_subject(args.run, args.weights, args.recipe, args.structure)
    baseline = load_subject(args.baseline) if args.baseline else None
    result, text = analyze(subject, opts, baseline)
    out = (
        Path(args.out)
        if args.out
        else (
            Path(args.run) / "analysis.json"
            if args.run
            else Path(args.weights).with_suffix(".json")
        )
    )
    write(result, out)
    print(text)
    print(f"\nwrote {out}")
    return 0


def _sweep(args) -> int:
    from .train.sweep import grid_points, sweep, sweep_table

    def names(text: str) -> list[str]:
        return [x.strip() for x in text.split(",") if x.strip()]

    points = grid_points(
        names(args.methods), names(args.structures), _floats("--targets", args.targets)
    )
    points = [(n, sets + args.set) for n, sets in points]
    results = sweep(Path(args.recipe), Path(args.out), points, jobs=args.jobs)
    table = sweep_table(results)
    atomic_write_text(Path(args.out) / "sweep.md", table + "\n")
    print(table)
    return 0


def _report(args) -> int:
    from .analysis.report import write_report

    path = write_report(args.runs, args.out)
    print(f"wrote {path}")
    return 0


def _export(args) -> int:
    from .deploy.export import export_run

    export_run(args.run, args.out, compact=args.compact, fmt=args.format, bits=args.bits)
    return 0


def _floats(flag: str, text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 or v > 1 for v in values):
        raise ConfigError(f"{flag}: expected numbers in [0, 1], got {text!r}")
    return values


def _zero_report(model) -> list[dict]:
    from .sparsity.masking import candidate_layers

    rows = []
    for name, m in candidate_layers(model):
        w = m.weight.detach()
        rows.append(
            {
                "name": name,
                "structure": "fine",
                "params": w.numel(),
                "achieved": float((w == 0).sum()) / w.numel(),
            }
        )
    return rows


def _list(args) -> int:
    from .data.catalog import list_datasets
    from .methods import METHODS
    from .models import list_models
    from .structures import STRUCTURES

    what = args.what
    if what == "models":
        items = list_models()
    elif what == "datasets":
        items = list_datasets()
    elif what == "structures":
        items = [
            (e.name + (f" ({', '.join(e.aliases)})" if e.aliases else ""), e.help)
            for e in STRUCTURES.entries()
        ]
    else:
        items = [
            (e.name + (f" ({', '.join(e.aliases)})" if e.aliases else ""), e.help)
            for e in METHODS.entries()
        ]
    width = max(len(n) for n, _ in items)
    for name, help_ in items:
        print(f"{name:<{width}}  {help_}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (exit 2) instead of the usage dump."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"sparsegrain: error: {message} (see '{self.prog} -h')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sparsegrain",
        description="Structured sparse training, and proof of what the structure is worth.",
        epilog=EPILOG,
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="train a recipe into a run directory",
        description="Train a recipe. Writes DIR/summary.json, metrics.jsonl, "
        "recipe.yaml (resolved), model.safetensors and masks.safetensors.",
    )
    t.add_argument("--recipe", metavar="FILE", help="YAML recipe (see recipes/)")
    t.add_argument("--out", metavar="DIR", required=True, help="run directory to write")
    t.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a recipe key, e.g. --set train.epochs=5 (repeatable)",
    )
    t.add_argument(
        "--resume", action="store_true", help="continue the run in DIR from its last checkpoint"
    )
    t.add_argument("--overwrite", action="store_true", help="replace a previous run in DIR")
    t.add_argument(
        "--init",
        metavar="RUN_DIR|FILE",
        help="start from trained weights (a run "
        "directory or a .safetensors file); needed by oneshot",
    )
    t.set_defaults(func=_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a finished run on its test set",
        description="Evaluate DIR/model.safetensors on the run's test data.",
    )
    e.add_argument("--run", metavar="DIR", required=True, help="run directory")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=_eval)

    a = sub.add_parser(
        "analyze",
        help="storage, FLOPs, accelerator model, robustness",
        description="What a sparse model is worth: storage per encoding with index "
        "overhead, dense and effective MACs, SCNN-like memory references (our "
        "reconstruction), accuracy, and on request adversarial robustness and "
        "per-layer sensitivity. Writes analysis.json.",
    )
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="DIR", help="run directory (structures from its summary)")
    src.add_argument("--weights", metavar="FILE", help="a model.safetensors file")
    a.add_argument("--recipe", metavar="FILE", help="with --weights: the recipe of the model/data")
    a.add_argument(
        "--structure",
        default="fine",
        help="with --weights: structure of the layers that hold zeros (default fine)",
    )
    a.add_argument("--out", metavar="FILE", help="where to write analysis.json")
    a.add_argument("--value-bits", type=int, default=32, help="bits per stored value (32)")
    a.add_argument("--index-bits", type=int, default=4, help="bits per relative index (4)")
    a.add_argument(
        "--attacks",
        default="",
        metavar="LIST",
        help="fgsm,pgd: adversarial "
        "accuracy (slow: PGD runs --pgd-steps backward passes per batch)",
    )
    a.add_argument("--epsilons", default="0,0.01,0.02,0.05", help="L-inf radii in pixel units")
    a.add_argument("--pgd-steps", type=int, default=10, help="PGD iterations (10)")
    a.add_argument("--baseline", metavar="RUN_DIR", help="dense run to attack side by side")
    a.add_argument(
        "--sensitivity",
        action="store_true",
        help="prune one layer at a time and suggest per-layer budgets (recipe overrides)",
    )
    a.add_argument("--sens-structure", help="structure for the sensitivity scan")
    a.add_argument("--max-batches", type=int, help="test batches for robustness/sensitivity")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    a.set_defaults(func=_analyze)

    sw = sub.add_parser(
        "sweep",
        help="train a grid of methods x structures x sparsities",
        description="Train one recipe over methods x structures x targets, one "
        "run directory per point, and print one table (also OUT/sweep.md and "
        "OUT/sweep.json). Finished points are reused, interrupted ones resumed.",
    )
    sw.add_argument("--recipe", metavar="FILE", required=True, help="base recipe")
    sw.add_argument("--out", metavar="DIR", required=True, help="directory of the runs")
    sw.add_argument("--methods", default="campfire", help="comma list (dense adds a baseline)")
    sw.add_argument("--structures", default="fine", help="comma list, e.g. fine,window,nm:2:4")
    sw.add_argument("--targets", default="0.5,0.7,0.9", help="comma list of sparsities")
    sw.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every point (repeatable)",
    )
    sw.add_argument("--jobs", type=int, default=1, help="points trained at once")
    sw.set_defaults(func=_sweep)

    rp = sub.add_parser(
        "report",
        help="PNG plots and a Markdown report over runs",
        description="Plots (accuracy vs sparsity per structure, compression "
        "ratio and memory references when analysis.json exists, per-layer "
        "sparsity, mask pictures) and report.md linking them.",
    )
    rp.add_argument("runs", nargs="+", metavar="DIR", help="run directories")
    rp.add_argument("--out", metavar="DIR", default="report", help="output directory (report)")
    rp.set_defaults(func=_report)

    ex = sub.add_parser(
        "export",
        help="write a run's model as safetensors, ONNX or the compressed format",
        description="Export DIR/model.safetensors, optionally compacted (zeroed filters and "
        "channels removed where exact), and check the written file against the masked "
        "model's outputs on test images (max abs difference printed).",
    )
    ex.add_argument("--run", metavar="DIR", required=True, help="run directory")
    ex.add_argument("--out", metavar="PATH", required=True, help="file to write")
    ex.add_argument("--compact", action="store_true", help="remove zeroed filters/channels first")
    ex.add_argument(
        "--format",
        default="safetensors",
        choices=["safetensors", "onnx", "compressed"],
        help="safetensors (default), onnx (needs the onnx extra) or compressed",
    )
    ex.add_argument(
        "--bits",
        type=int,
        choices=[32, 16],
        help="with --format compressed: bits per stored value (32 exact, 16 float16 lossy)",
    )
    ex.set_defaults(func=_export)

    ls = sub.add_parser(
        "list",
        help="list models, datasets, structures or methods",
        description="List the registered names with a one-line description.",
    )
    ls.add_argument("what", choices=["models", "datasets", "structures", "methods"])
    ls.set_defaults(func=_list)
    return p


def _version() -> str:
    from .core.version import VERSION as __version__

    return f"sparsegrain {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"sparsegrain: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"sparsegrain: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sparsegrain: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
