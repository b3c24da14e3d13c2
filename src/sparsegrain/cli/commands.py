"""What each command does with its parsed flags. Every flag and output path is checked before
the work starts; messages name the flag the user gave."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..core.errors import ConfigError


def train(args) -> int:
    from ..recipe.load import load_recipe
    from ..runs.files import RUNTIME_KEYS, read_run_recipe, recipe_differences
    from ..train.loop import run

    if args.resume:
        if args.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other; choose one")
        if args.init is not None:
            raise ConfigError(
                "--init starts a new run from trained weights; --resume continues the run in "
                "--out from its checkpoint: give one of them"
            )
        recipe = read_run_recipe(args.out, flag="--out")
        if args.recipe is not None or args.set:
            given = load_recipe(args.recipe or recipe, args.set)
            diff = recipe_differences(recipe, given)
            if diff:
                key, old, new = diff[0]
                raise ConfigError(
                    f"--resume: {key} would change from {old!r} to {new!r} (the run's "
                    f"{Path(args.out) / 'recipe.yaml'}); a resumed run keeps its recipe, "
                    f"only {', '.join(RUNTIME_KEYS)} may change"
                )
            recipe = given  # the same run, with this process's thread count and such
    elif args.recipe is None:
        raise ConfigError("train: --recipe FILE is required (or --resume to continue a run)")
    else:
        recipe = load_recipe(args.recipe, args.set)
    run(recipe, args.out, resume=args.resume, overwrite=args.overwrite, init=args.init)
    return 0


def evaluate_run(args) -> int:
    from ..analysis.accuracy import evaluate
    from ..core.tables import overall_sparsity
    from ..data.catalog import build_data
    from ..recipe.build import build_model
    from ..runs.files import WEIGHTS, load_init, read_run_recipe

    recipe = read_run_recipe(args.run)
    if not (Path(args.run) / WEIGHTS).is_file():
        raise ConfigError(f"--run {args.run}: no {WEIGHTS}; the run did not finish")
    data = build_data(recipe.data, seed=recipe.train.seed)
    model = build_model(recipe, data.num_classes, data.in_channels)
    load_init(model, str(Path(args.run) / WEIGHTS), flag="--run")
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


def analyze(args) -> int:
    from ..analysis.analyze import AnalyzeOptions, check_baseline, load_subject, output_path, write
    from ..analysis.analyze import analyze as run_analysis

    if args.run is not None:
        for flag, value in (("--recipe", args.recipe), ("--structure", args.structure)):
            if value is not None:
                raise ConfigError(f"{flag} applies to --weights only; a run has its own")
    if args.baseline is not None and args.attacks is None:
        raise ConfigError("--baseline is the dense run attacked beside this one: give --attacks")
    if args.sens_structure is not None and not args.sensitivity:
        raise ConfigError("--sens-structure applies to --sensitivity only")
    opts = AnalyzeOptions(
        value_bits=args.value_bits,
        index_bits=args.index_bits,
        attacks=names("--attacks", args.attacks) if args.attacks is not None else [],
        epsilons=floats("--epsilons", args.epsilons, hi=1.0, hi_open=False),
        pgd_steps=args.pgd_steps,
        sensitivity=args.sensitivity,
        sens_structure=args.sens_structure,
        max_batches=args.max_batches,
        progress=not args.no_progress,
    )
    opts.check()
    out = output_path(
        args.run,
        args.weights,
        args.out,
        recipe=args.recipe,
        baseline=args.baseline,
        force=args.force,
    )
    subject = load_subject(args.run, args.weights, args.recipe, args.structure or "fine")
    baseline = load_subject(args.baseline, flag="--baseline") if args.baseline else None
    if baseline is not None:
        check_baseline(subject, baseline)
    result, text = run_analysis(subject, opts, baseline)
    write(result, out)
    print(text)
    print(f"\nwrote {out}")
    return 0


def sweep(args) -> int:
    from ..methods import METHODS
    from ..structures import parse_structure
    from ..train.sweep import grid_points, sweep_table
    from ..train.sweep import sweep as run_sweep

    methods = names("--methods", args.methods)
    structures = names("--structures", args.structures)
    for m in methods:
        try:
            METHODS.get(m)
        except ConfigError as e:
            raise ConfigError(f"--methods: {e}") from None
    for st in structures:
        try:
            parse_structure(st)
        except ConfigError as e:
            raise ConfigError(f"--structures: {e}") from None
    targets = floats("--targets", args.targets, hi=1.0, hi_open=True)
    if args.jobs < 1:
        raise ConfigError(f"--jobs: must be an integer >= 1, got {args.jobs}")
    points = grid_points(methods, structures, targets)
    points = [(n, sets + args.set) for n, sets in points]
    results = run_sweep(Path(args.recipe), Path(args.out), points, jobs=args.jobs)
    table = sweep_table(results)
    from ..core.io import atomic_write_text  # here, so that the CLI starts without torch

    atomic_write_text(Path(args.out) / "sweep.md", table + "\n")
    print(table)
    return 0


def report(args) -> int:
    from ..analysis.report import write_report

    path = write_report(args.runs, args.out)
    print(f"wrote {path}")
    return 0


def export(args) -> int:
    from ..deploy.export import export_run

    export_run(
        args.run,
        args.out,
        compact=args.compact,
        fold_bn=args.fold_bn,
        channels_last=args.channels_last,
        fmt=args.format,
        bits=args.bits,
        force=args.force,
    )
    return 0


def list_names(args) -> int:
    from ..data.catalog import list_datasets
    from ..methods import METHODS
    from ..models import list_models
    from ..structures import STRUCTURES

    what = args.what
    if what == "models":
        from ..models.external import SOURCES

        # the models users bring, after the zoo (their packages are not imported to list them)
        prefixed = [tuple(form.split(", ", 1)) for form in SOURCES.values()]
        prefixed = [(n, f"{h}; pip install 'sparsegrain[models]'") for n, h in prefixed]
        items = list_models() + prefixed
    elif what == "datasets":
        items = list_datasets()
    else:
        registry = STRUCTURES if what == "structures" else METHODS
        items = [
            (e.name + (f" ({', '.join(e.aliases)})" if e.aliases else ""), e.help)
            for e in registry.entries()
        ]
    width = max(len(n) for n, _ in items)
    for name, help_ in items:
        print(f"{name:<{width}}  {help_}")
    return 0


def names(flag: str, text: str) -> list[str]:
    """A comma-separated list flag; an empty one is refused."""
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values:
        raise ConfigError(f"{flag}: give at least one value (comma-separated), got {text!r}")
    return values


def floats(flag: str, text: str, *, hi: float, hi_open: bool) -> list[float]:
    """A comma-separated list of numbers in [0, hi] (or [0, hi) where ``hi_open``)."""
    items = names(flag, text)
    try:
        values = [float(x) for x in items]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    bound = f"[0, {hi:g}{')' if hi_open else ']'}"
    for v in values:
        if not math.isfinite(v) or v < 0 or v > hi or (hi_open and v == hi):
            raise ConfigError(f"{flag}: expected numbers in {bound}, got {text!r}")
    return values


def _zero_report(model) -> list[dict]:
    from ..sparsity.masking import candidate_layers

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
