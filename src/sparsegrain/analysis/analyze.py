"""``sparsegrain analyze``: what a sparse model is worth, from its weights and structure names.

Reads a run directory (``recipe.yaml``, ``model.safetensors``, the structure of each layer from
``summary.json``) or a weights file, never the method that made the zeros, and returns one
JSON-able record: accuracy, storage per encoding, FLOPs, SCNN-like memory references (our
reconstruction) and, when asked, adversarial robustness and per-layer sensitivity.

Every weight is read in its ``(out, in)`` view, the one the structure names of a run mean
(``gemm_views``): a Hugging Face ``Conv1D`` stores its weight ``(in, out)`` and is transposed
before storage, FLOPs and memory references are counted. Storage covers the tensors sparsity can
prune (``candidates.candidate_tensors``: ``in_proj_weight`` included); FLOPs and memory
references cover every weight the profile saw.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..core.io import atomic_write_text, load_tensors
from ..data.catalog import build_data, dataset_inputs
from ..recipe.build import build_model
from ..recipe.load import Recipe, load_recipe
from ..runs.files import ANALYSIS, RECIPE, SUMMARY, WEIGHTS, load_model_state, read_run_recipe
from ..runs.records import check_output, layer_structures
from ..runs.rundir import check_unlocked
from ..sparsity.attention import is_conv1d
from ..sparsity.candidates import candidate_layers, candidate_tensors
from ..structures import parse_structure
from .accelerator import MODEL_NOTE, SCNNConfig, format_refs, model_refs
from .accuracy import evaluate
from .flops import Profile, format_flops, layer_weights, model_flops, profile
from .robustness import attack_accuracy, robustness_table
from .sensitivity import layer_sensitivity, suggest_budgets
from .storage import BitWidths, format_storage, model_storage


@dataclass
class AnalyzeOptions:
    value_bits: int = 32
    index_bits: int = 4
    attacks: list[str] = field(default_factory=list)  # fgsm, pgd; empty: no robustness
    epsilons: list[float] = field(default_factory=lambda: [0.0, 0.01, 0.02, 0.05])
    pgd_steps: int = 10
    sensitivity: bool = False
    sens_structure: str | None = None  # default: each layer's own structure, else fine
    sens_sparsities: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 0.9])
    max_batches: int | None = None  # limit test batches for robustness / sensitivity
    progress: bool = True

    def check(self) -> None:
        """Refuse, before any work, a value that means nothing; messages name the flags of
        ``sparsegrain analyze``. Widths: a stored value of 1 to 64 bits (float64 at most); a
        relative index of 1 to 32 bits (a 32-bit gap already spans any layer up to 2**32
        weights, so a wider one never shortens a code)."""
        _int_flag("--value-bits", self.value_bits, 1, 64)
        _int_flag("--index-bits", self.index_bits, 1, 32)
        _int_flag("--pgd-steps", self.pgd_steps, 1, MAX_PGD_STEPS)
        if self.max_batches is not None:
            _int_flag("--max-batches", self.max_batches, 1, None)
        for a in self.attacks:
            if a not in ATTACKS:
                raise ConfigError(f"--attacks: unknown attack '{a}'; choose from: fgsm, pgd")
        if not self.epsilons:
            raise ConfigError("--epsilons: give at least one radius, e.g. 0,0.01")
        for e in self.epsilons:
            if not (isinstance(e, (int, float)) and math.isfinite(e) and 0 <= e <= 1):
                raise ConfigError(f"--epsilons: radii are numbers in [0, 1] (pixel units), got {e}")
        if self.sens_structure is not None:
            try:
                parse_structure(self.sens_structure)
            except ConfigError as e:
                raise ConfigError(f"--sens-structure: {e}") from None


ATTACKS = ("fgsm", "pgd")
# PGD iterations: each is a backward pass per test batch; papers use 7 to 100.
MAX_PGD_STEPS = 10_000


def _int_flag(flag: str, value, lo: int, hi: int | None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        allowed = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(f"{flag}: must be an integer {allowed}, got {value!r}")


@dataclass
class Subject:
    """What is analyzed: a model with its weights, the recipe it came from, layer structures."""

    name: str
    recipe: Recipe
    model: nn.Module
    structures: dict[str, str | None]


# Data keys that do not change the test set a model is measured on (loader settings, and what
# only the training split sees).
LOADER_KEYS = ("batch_size", "test_batch_size", "train_subset", "augment", "num_workers")


def check_baseline(subject: Subject, baseline: Subject) -> None:
    """Refuse a ``--baseline`` measured on other test data than the run: robustness side by side
    means the same test images, the same classes and the same input shape."""
    a, b = dataclasses.asdict(subject.recipe.data), dataclasses.asdict(baseline.recipe.data)
    differ = [k for k in a if k not in LOADER_KEYS and a[k] != b.get(k)]
    if differ:
        k = differ[0]
        raise ConfigError(
            f"--baseline {baseline.name}: its test data differs from the analyzed run's "
            f"(data.{k}: {b.get(k)!r} against {a[k]!r}); a baseline is the same data trained "
            "dense"
        )


def load_subject(
    run: str | None = None,
    weights: str | None = None,
    recipe: str | None = None,
    structure: str = "fine",
    flag: str = "--run",
) -> Subject:
    """A run directory, or a weights file plus a recipe (default: the model its metadata names
    on Fashion-MNIST). Without a run's summary every layer's structure is ``structure``.
    ``flag`` names the option that gave ``run`` in messages."""
    if (run is None) == (weights is None):
        raise ConfigError("analyze: give either --run DIR or --weights FILE")
    try:
        parse_structure(structure)
    except ConfigError as e:
        raise ConfigError(f"--structure: {e}") from None
    if run is not None:
        rec = read_run_recipe(Path(run), flag)
        path = Path(run) / WEIGHTS
        if not path.is_file():
            raise ConfigError(f"{flag} {run}: no {WEIGHTS}; the run did not finish")
        summary = Path(run) / SUMMARY
        structures = layer_structures(run, flag) if summary.is_file() else None
    else:
        path, structures = Path(weights), None
        tensors, meta = load_tensors(path, "--weights file")
        if recipe is not None:
            rec = load_recipe(recipe)
        elif "model" in meta:
            rec = load_recipe({"model": meta["model"]})
        else:
            raise ConfigError(f"{path}: no model in its metadata; give --recipe FILE")
    data = build_data(rec.data, seed=rec.train.seed)
    model = build_model(rec, data.num_classes, data.in_channels)
    tensors, _ = load_tensors(path, "weights")
    load_model_state(model, tensors, str(path))
    model.eval()
    if structures is None:
        structures = {
            n: (structure if bool((getattr(m, t) == 0).any()) else None)
            for n, m, t in candidate_tensors(model)
        }
    return Subject(str(run or weights), rec, model, structures)


def analyze(
    subject: Subject, opts: AnalyzeOptions, baseline: Subject | None = None, log=print
) -> tuple[dict[str, Any], str]:
    """The analysis record of one model (and its dense baseline's robustness), and its tables."""
    model, rec = subject.model, subject.recipe
    check_inputs(rec, opts)
    data = build_data(rec.data, seed=rec.train.seed)
    example = next(iter(data.test))[0][:64]
    geoms, weights = gemm_views(model, profile(model, example))
    layers = [(n, weights[n], subject.structures.get(n)) for n, _, _ in candidate_tensors(model)]
    storage = model_storage(layers, BitWidths(value=opts.value_bits, index=opts.index_bits))
    flop = model_flops(geoms, weights)
    refs = model_refs(geoms, weights, subject.structures, cfg=SCNNConfig())
    log("evaluating accuracy ...")
    acc = evaluate(model, data.test)
    out: dict[str, Any] = {
        "subject": subject.name,
        "model": rec.model.name,
        "dataset": rec.data.name,
        "accuracy": {"top1": acc["top1"], "top5": acc["top5"]},
        "structures": subject.structures,
        "storage": _jsonable(storage),
        "flops": _jsonable(flop),
        "accelerator": _jsonable(refs),
        "accelerator_note": MODEL_NOTE,
    }
    if opts.attacks:
        out["robustness"] = {"model": _robustness(model, data, opts)}
        if baseline is not None:
            bdata = build_data(baseline.recipe.data, seed=baseline.recipe.train.seed)
            out["robustness"]["baseline"] = _robustness(baseline.model, bdata, opts)
            out["baseline"] = baseline.name
    text = [
        f"{subject.name}: top-1 {acc['top1']:.2f}%  top-5 {acc['top5']:.2f}%",
        "",
        "storage",
        format_storage(storage),
        "",
        "compute",
        format_flops(flop),
        "",
        "accelerator",
        format_refs(refs),
    ]
    if opts.attacks:
        rob = out["robustness"]
        table = {"model": _float_keys(rob["model"])}
        if "baseline" in rob:
            table = {"baseline": _float_keys(rob["baseline"]), **table}
        text += ["", "robustness (top-1 %, L-inf epsilon in pixel units)", robustness_table(table)]
    if opts.sensitivity:
        out["sensitivity"] = _sensitivity(subject, data, opts)
        text += [
            "",
            "suggested sparsity.overrides (sensitivity, 1 point tolerance):",
            json.dumps(out["sensitivity"]["suggested_overrides"], indent=2),
        ]
    return out, "\n".join(text)


def check_inputs(recipe: Recipe, opts: AnalyzeOptions) -> None:
    """Refuse, before any work, an analysis the recipe's data cannot take: the attacks move
    pixels, so a model that reads token ids cannot be attacked."""
    if opts.attacks and dataset_inputs(recipe.data.name) == "tokens":
        raise ConfigError(
            f"--attacks: the attacks move pixels, and dataset '{recipe.data.name}' holds token "
            "ids; analyze a text model without --attacks"
        )


def gemm_views(model: nn.Module, geoms: Profile) -> tuple[Profile, dict[str, Tensor]]:
    """``geoms`` and the weights of ``model`` (``flops.layer_weights``, masks applied), with
    every candidate weight in its ``(out, in)`` view: a Hugging Face ``Conv1D`` weight, stored
    ``(in, out)``, is transposed and the ``weight_shape`` of its geometry swapped, as
    ``structures.Transposed`` sees it, so that axis 0 is the output units for every layer."""
    weights = layer_weights(model)
    stored = {n for n, m in candidate_layers(model) if is_conv1d(m)}
    for n, m, t in candidate_tensors(model):
        w = getattr(m, t).detach()
        weights[n] = w.t() if n in stored else w

    def view(g):
        return replace(g, weight_shape=tuple(reversed(g.weight_shape))) if g.name in stored else g

    out = Profile(
        [view(g) for g in geoms],
        [view(g) for g in geoms.extra],
        geoms.weights,
        geoms.functional,
        geoms.order,
        geoms.notes,
    )
    return out, weights


def _float_keys(d: dict[str, dict[str, float]]) -> dict[str, dict[float, float]]:
    return {a: {float(e): v for e, v in r.items()} for a, r in d.items()}


def _robustness(model, data, opts: AnalyzeOptions) -> dict[str, dict[str, float]]:

    return {
        attack: {
            str(eps): top1
            for eps, top1 in attack_accuracy(
                model,
                data.test,
                attack=attack,
                epsilons=opts.epsilons,
                steps=opts.pgd_steps,
                max_batches=opts.max_batches,
                progress=opts.progress,
            ).items()
        }
        for attack in opts.attacks
    }


def _sensitivity(subject: Subject, data, opts: AnalyzeOptions) -> dict[str, Any]:

    scans = {}
    names = [n for n, st in subject.structures.items() if st is not None] or None
    structure = opts.sens_structure or _common_structure(subject.structures)
    sens = layer_sensitivity(
        subject.model,
        data.test,
        names,
        structure,
        opts.sens_sparsities,
        max_batches=opts.max_batches,
        progress=opts.progress,
    )
    for name, curve in sens.items():
        scans[name] = {str(s): a for s, a in curve.items()}
    target = subject.recipe.sparsity.target
    params = {n: m.weight.numel() for n, m in candidate_layers(subject.model)}
    # the curves' own baseline: the same (possibly --max-batches limited) test batches
    base = sens.baseline
    overrides = suggest_budgets(sens, base, target, tolerance=1.0, params=params) if target else {}
    return {
        "structure": structure,
        "baseline_top1": base,
        "curves": scans,
        "skipped": dict(sens.skipped),
        "suggested_overrides": overrides,
    }


def _common_structure(structures: dict[str, str | None]) -> str:
    specs = [s for s in structures.values() if s is not None]
    return max(set(specs), key=specs.count) if specs else "fine"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "__dataclass_fields__"):
        return {k: _jsonable(getattr(x, k)) for k in x.__dataclass_fields__}
    return x


def output_path(
    run: str | None,
    weights: str | None,
    out: str | None,
    *,
    recipe: str | None = None,
    baseline: str | None = None,
    force: bool = False,
) -> Path:
    """Where ``analyze`` writes, checked before any work: ``--out``, else the run's own
    ``analysis.json`` or the weights file with a ``.json`` suffix. Never over a file it reads
    or a run's own file (another run's ``analysis.json`` included) unless ``force``."""
    if out is not None:
        path = Path(out)
    elif run is not None:
        path = Path(run) / ANALYSIS
    else:
        path = Path(weights).with_suffix(".json")
    reads = [Path(weights)] if weights is not None else []
    reads += [Path(recipe)] if recipe is not None else []
    for d in (run, baseline):
        if d is not None:
            reads += [Path(d) / name for name in (RECIPE, WEIGHTS, SUMMARY)]
    owns = [Path(run) / ANALYSIS] if run is not None else []
    if run is not None and os.path.realpath(Path(path).parent) == os.path.realpath(run):
        check_unlocked(run, "--run")  # a run being trained gets its analysis once it is done
    return check_output(path, reads=reads, owns=owns, force=force)


def write(result: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
