"""Layer sensitivity: accuracy after pruning one layer alone, and per-layer budgets from it.

The scan of Han et al. ("Learning both Weights and Connections", NeurIPS 2015) and Li et al.
("Pruning Filters for Efficient ConvNets", ICLR 2017), for any structure of section 2 of
DESIGN.md: for every layer and every sparsity ``s``, the layer's weight is multiplied by
``structure.mask(weight, s, score)`` (the layer's own balance domains, no global threshold),
the model is evaluated with every other layer untouched, and the weight is put back bit for bit.
No fine-tuning happens between pruning and evaluation, so the curves measure how much a layer
tolerates by magnitude alone; they rank layers, they do not predict accuracy after training.

Accuracy is read from the model's logits (``core.outputs.logits_of``: a tensor, or the
``logits`` of a Hugging Face ``ModelOutput``), so models users bring are scanned the same way.
Masks are computed on the weight the forward pass sees (a parametrized weight's mask applied).
A layer the structure does not fit is skipped with a warning and its reason is kept in
``Sensitivity.skipped``. Only the model's weights are read, never the method that made them.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core.errors import ConfigError, unknown_name
from ..sparsity.attention import is_conv1d
from ..sparsity.candidates import candidate_layers
from ..sparsity.classifier import default_exclude
from ..structures import Transposed, check_sparsity, parse_structure
from .robustness import top1

DEFAULT_SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9)


class Sensitivity(dict):
    """``{layer name: {sparsity: top1 percent}}``, with what produced it as attributes.

    - ``baseline``: top-1 of the model as given (the same batches);
    - ``params``: ``{layer: weight elements}``, the weights ``suggest_budgets`` averages with;
    - ``achieved``: ``{layer: {sparsity: sparsity the structure actually reaches}}``;
    - ``skipped``: ``{layer: why the structure does not fit}``;
    - ``structure``: the structure's canonical spec.
    """

    def __init__(
        self, data=(), *, baseline: float, structure: str, params=None, achieved=None, skipped=None
    ):
        super().__init__(data)
        self.baseline = baseline
        self.structure = structure
        self.params: dict[str, int] = dict(params or {})
        self.achieved: dict[str, dict[float, float]] = dict(achieved or {})
        self.skipped: dict[str, str] = dict(skipped or {})


def _select(model: nn.Module, layers: Iterable[str] | None) -> list[tuple[str, nn.Module]]:
    """Candidate Conv/Linear layers named by ``layers`` (names or globs), in model order.

    ``None``: the layers a recipe prunes by default (every Conv/Linear but the first conv and
    the classifier, ``masking.default_exclude``); pass ``["*"]`` for all of them.
    """
    cands = candidate_layers(model)
    if layers is None:
        skip = set(default_exclude(model))
        return [(n, m) for n, m in cands if n not in skip]
    if isinstance(layers, str):
        raise ConfigError(f"layers must be a list of layer names or patterns, got {layers!r}")
    names = [n for n, _ in cands]
    wanted: set[str] = set()
    for pattern in layers:
        hits = [n for n in names if fnmatch.fnmatchcase(n, str(pattern))]
        if not hits:
            raise unknown_name("layer", pattern, names)
        wanted.update(hits)
    return [(n, m) for n, m in cands if n in wanted]


def _trainable(module: nn.Module) -> torch.Tensor:
    """The stored weight tensor to prune in place (the original under a parametrization)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def _check_sparsities(sparsities: Sequence[float]) -> list[float]:
    if isinstance(sparsities, (int, float)) or not sparsities:
        raise ConfigError(f"sparsities must be a non-empty list of numbers, got {sparsities!r}")
    out = []
    for s in sparsities:
        try:
            out.append(check_sparsity(s))
        except (TypeError, ValueError):
            raise ConfigError(f"sparsities: each must be a number in [0, 1), got {s!r}") from None
    return sorted(set(out))


def layer_sensitivity(
    model: nn.Module,
    loader: Iterable,
    layers: Sequence[str] | None = None,
    structure: str = "fine",
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    score: str = "l1",
    max_batches: int | None = None,
    progress: bool = False,
) -> Sensitivity:
    """Top-1 after pruning each layer alone to each sparsity with ``structure``.

    ``layers``: names or shell-style patterns of Conv/Linear layers (default: those a recipe
    prunes by default). Sparsities are sorted and deduplicated. Weights are restored exactly
    after every evaluation (also on error). Where pruning changes no stored value (``s = 0``, or
    a layer already sparser than ``s``) the baseline is reused rather than re-evaluated.
    """
    st = parse_structure(structure)
    levels = _check_sparsities(sparsities)
    chosen = _select(model, layers)
    skipped, todo = {}, []
    for name, module in chosen:
        reason = _on(st, module).fits(tuple(module.weight.shape))
        if reason is None:
            todo.append((name, module))
        else:
            skipped[name] = reason
            warnings.warn(f"layer_sensitivity: skipped '{name}': {reason}", stacklevel=2)
    baseline = top1(model, loader, max_batches)
    out = Sensitivity(baseline=baseline, structure=st.spec, skipped=skipped)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo) * len(levels), desc="sensitivity", leave=False)

    def evaluate() -> float:
        return top1(model, loader, max_batches)

    try:
        for name, module in todo:
            if bar is not None:
                bar.set_postfix_str(name)
            on = _on(st, module)
            out[name] = _scan_layer(module, on, levels, score, baseline, evaluate, bar)
            shape = tuple(module.weight.shape)
            out.params[name] = module.weight.numel()
            out.achieved[name] = {s: on.achieved_sparsity(shape, s) for s in levels}
    finally:
        if bar is not None:
            bar.close()
    return out


def _on(st, module):
    """The structure as it applies to ``module``'s stored weight (Hugging Face ``Conv1D``
    stores it (in, out): the structure goes on its (out, in) view)."""
    return Transposed(st) if is_conv1d(module) else st


def _scan_layer(module, st, levels, score, baseline, evaluate, bar) -> dict[float, float]:
    """``{s: top1}`` for one layer; the stored weight is restored bit for bit afterwards."""
    param = _trainable(module)
    saved = param.detach().clone()
    curve = {}
    try:
        for s in levels:
            with torch.no_grad():
                param.mul_(st.mask(module.weight.detach(), s, score))
                unchanged = torch.equal(param, saved)
            curve[s] = baseline if unchanged else evaluate()
            with torch.no_grad():
                param.copy_(saved)
            if bar is not None:
                bar.update(1)
    finally:
        with torch.no_grad():
            param.copy_(saved)
    return curve


def _tolerated(curve: Mapping[float, float], baseline: float, tolerance: float) -> float:
    """The largest tested sparsity up to which every tested sparsity stays within tolerance."""
    best = 0.0
    for s in sorted(curve):
        if baseline - curve[s] > tolerance + 1e-9:  # 1e-9: float round-off in the percentages
            break
        best = float(s)
    return best


def _literal(name: str) -> str:
    """A glob that matches exactly ``name`` (``*``, ``?`` and ``[`` escaped as ``[*]`` ...)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def suggest_budgets(
    sens: Mapping[str, Mapping[float, float]],
    baseline_top1: float,
    target: float,
    tolerance: float,
    *,
    params: Mapping[str, int] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-layer sparsity targets from a sensitivity scan, as recipe ``sparsity.overrides``.

    A heuristic, in two steps:

    1. every layer gets ``a_l``: the largest tested sparsity ``s`` such that the accuracy drop
       ``baseline_top1 - top1`` is at most ``tolerance`` points at ``s`` *and at every smaller
       tested sparsity* (one noisy good point past a bad one is not trusted); 0 if even the
       smallest tested sparsity drops too much;
    2. with ``M`` the parameter-weighted mean of the ``a_l``: if ``M > target``, every budget is
       scaled by ``target / M``, so the weighted mean is exactly ``target`` and each layer keeps
       its share of the slack; if ``M <= target`` the ``a_l`` are returned unscaled and, when
       ``M < target``, a warning says the target cannot be met within ``tolerance``.

    Tolerances are for one layer pruned alone; drops of several layers add up (roughly), and
    fine-tuning recovers part of them. ``params`` gives the weight count of every layer (default
    ``sens.params`` of a ``layer_sensitivity`` result). Budgets are rounded to 4 decimals;
    returned as ``{pattern: {"target": s}}`` with a pattern matching exactly the layer.
    """
    if not sens:
        raise ConfigError("suggest_budgets: sens is empty; expected {layer: {sparsity: top1}}")
    if not 0 <= target < 1:
        raise ConfigError(f"target must be in [0, 1), got {target!r}")
    if not tolerance >= 0:
        raise ConfigError(f"tolerance must be >= 0 (accuracy points), got {tolerance!r}")
    counts = params if params is not None else getattr(sens, "params", None)
    missing = [n for n in sens if not counts or n not in counts]
    if missing:
        raise ConfigError(
            f"suggest_budgets: no parameter count for layer(s) {', '.join(missing)}; pass "
            f"params={{layer: weight elements}} or use the result of layer_sensitivity"
        )
    allowed = {n: _tolerated(curve, baseline_top1, tolerance) for n, curve in sens.items()}
    total = sum(counts[n] for n in sens)
    mean = sum(allowed[n] * counts[n] for n in sens) / total if total else 0.0
    if mean > target:
        allowed = {n: a * target / mean for n, a in allowed.items()}
    elif mean < target:
        warnings.warn(
            f"suggest_budgets: within {tolerance} points per layer the weighted mean sparsity "
            f"is {mean:.4f}, below the target {target}; raise the tolerance or scan higher "
            f"sparsities (budgets returned unscaled)",
            stacklevel=2,
        )
    return {_literal(n): {"target": round(a, 4)} for n, a in allowed.items()}
