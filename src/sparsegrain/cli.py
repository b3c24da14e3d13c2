"""Command line: a thin shell over the library. Mistakes print one line and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ConfigError, TrainingError

EPILOG = "Recipes: see recipes/ and README.md. Every key can be changed with --set key.sub=value."


def _train(args) -> int:
    from .recipe import load_recipe
    from .runfiles import read_run_recipe
    from .train import run

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
    from .data import build_data
    from .runfiles import WEIGHTS, load_init, read_run_recipe
    from .summary import overall_sparsity
    from .train import build_model, evaluate

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


def _zero_report(model) -> list[dict]:
    from .masking import candidate_layers

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
    from .data import list_datasets
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

    ls = sub.add_parser(
        "list",
        help="list models, datasets, structures or methods",
        description="List the registered names with a one-line description.",
    )
    ls.add_argument("what", choices=["models", "datasets", "structures", "methods"])
    ls.set_defaults(func=_list)
    return p


def _version() -> str:
    from . import __version__

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
