"""``compact(model, example_input)``: physically remove filters and channels, checked exact."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...analysis.flops import layer_weights, model_flops, profile
from ...core.fx import CONVS
from ...core.tables import format_table
from ...graph import channel_graph, is_conv1d_transposed
from ...sparsity.handle import finalize_
from .fold import fold_pair_, foldable_pairs
from .heads import compact_heads_
from .plan import LayerChannels, plan_compaction
from .rebuild import apply_folds, shrink_


@dataclass
class CompactResult:
    """A compacted model and what was done to it.

    ``layers``: every Conv/Linear/BatchNorm that changed, with the kept channel indices (the
    architecture description ``save_compact`` writes). ``notes``: per layer, why channels were
    kept that might look removable. ``max_abs_diff``: largest ``|compacted - original|`` over the
    outputs on the example input (eval mode).
    """

    model: nn.Module
    layers: dict[str, LayerChannels]
    notes: dict[str, list[str]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    max_abs_diff: float = 0.0
    traced: bool = True
    sizes_before: dict[str, tuple[str, str]] = field(default_factory=dict)
    bias_added: list[str] = field(default_factory=list)
    tracer: str = ""
    params_ideal: int = 0
    macs_ideal: int = 0
    heads: dict[str, list[int]] = field(default_factory=dict)
    folded: dict[str, str] = field(default_factory=dict)  # BatchNorm -> the layer it went into
    channels_last: bool = False

    @property
    def macs_ratio(self) -> float:
        """Dense MACs before / after: the ideal speedup of the compacted model."""
        return self.macs_before / self.macs_after if self.macs_after else float("inf")

    @property
    def reached(self) -> dict[str, float | None]:
        """Fraction of the ideal reduction reached (1.0: all of it; 1.0 when nothing was to
        remove): ``(before - after) / (before - ideal)`` for parameters and MACs (None when
        the ideal's MACs could not be counted: a model that cannot run at those shapes)."""

        def frac(before: int, after: int, ideal: int) -> float | None:
            if ideal <= 0:
                return None
            return 1.0 if before <= ideal else (before - after) / (before - ideal)

        return {
            "params": frac(self.params_before, self.params_after, self.params_ideal),
            "macs": frac(self.macs_before, self.macs_after, self.macs_ideal),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "traced": self.traced,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "max_abs_diff": self.max_abs_diff,
            "tracer": self.tracer,
            "params_ideal": self.params_ideal,
            "macs_ideal": self.macs_ideal,
            "reached": self.reached,
            "heads": self.heads,
            "folded": self.folded,
            "channels_last": self.channels_last,
            "layers": {n: s.to_dict() for n, s in self.layers.items()},
            "notes": self.notes,
        }

    def format(self) -> str:
        """One row per changed or noted layer, then the totals."""
        sizes = _sizes(self.model)
        rows = []
        for name in sizes:
            if name not in self.layers and name not in self.notes:
                continue
            (out, inp), (out0, inp0) = sizes[name], self.sizes_before.get(name, ("?", "?"))
            shown_in = f"{inp}/{inp0}" if inp else ""
            shown_in += " +bias" if name in self.bias_added else ""
            rows.append([name, f"{out}/{out0}", shown_in, "; ".join(self.notes.get(name, []))])
        table = format_table(rows, ["layer", "out kept", "in kept", "note"]) if rows else ""
        reached = self.reached
        return (
            f"{table}\nparams {self.params_before:,} -> {self.params_after:,}  "
            f"MACs/example {self.macs_before:,} -> {self.macs_after:,} "
            f"(ideal speedup {self.macs_ratio:.2f}x)  max abs diff {self.max_abs_diff:.3g}\n"
            f"reached {_pct(reached['params'])} of the ideal parameter reduction "
            f"({self.params_ideal:,}) and {_pct(reached['macs'])} of the MAC reduction "
            f"({self.macs_ideal:,}); traced with {self.tracer or 'nothing'}"
        )


def _pct(v: float | None) -> str:
    return "?" if v is None else f"{v:.0%}"


def _sizes(model: nn.Module) -> dict[str, tuple[str, str]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, CONVS):
            out[name] = (str(m.out_channels), str(m.in_channels))
        elif isinstance(m, nn.Linear):
            out[name] = (str(m.out_features), str(m.in_features))
        elif is_conv1d_transposed(m):
            out[name] = (str(m.weight.shape[1]), str(m.weight.shape[0]))
        elif isinstance(m, _BatchNorm):
            out[name] = (str(m.num_features), "")
    return out


def _call(model: nn.Module, example_input):
    return model(*(example_input if isinstance(example_input, tuple) else (example_input,)))


@torch.no_grad()
def _outputs(model: nn.Module, example_input) -> list[torch.Tensor]:
    flat: list[torch.Tensor] = []
    _flatten(_call(model, example_input), flat)
    return [t.detach().clone() for t in flat]


def _flatten(obj, out: list) -> None:
    """Every tensor of a model's output (tuples, lists, dicts and ModelOutputs), in order."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _flatten(v, out)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            _flatten(v, out)


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    return max((float((x.double() - y.double()).abs().max()) for x, y in zip(a, b)), default=0.0)


def _macs(model: nn.Module, example_input) -> int:

    geoms = profile(model, example_input)
    return int(model_flops(geoms, layer_weights(model))["total"]["dense"])


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compact(
    model: nn.Module,
    example_input,
    *,
    tolerance: float = 1e-4,
    fold_bn: bool = False,
    channels_last: bool = False,
) -> CompactResult:
    """Return a smaller copy of ``model`` without the filters and channels that provably do not
    change its outputs (rule: ``sparsegrain.compact.plan``); ``model`` itself is not changed.

    ``example_input`` (a tensor or a tuple of positional arguments) fixes the tensor shapes for
    tracing and is used to check the result. Attached masks are baked in first. Attention heads
    the masks zeroed go first (``heads``), then filters and channels over the channel graph
    (``graph``: torch.fx, else a run of the model on ``example_input``; ``tracer`` says which).
    A model that cannot be traced either way comes back uncompacted with a note on every layer.
    The compacted model is in eval mode. Raises RuntimeError if the check finds a difference
    above ``tolerance * max(1, max |output|)`` (a bug, never expected).
    """

    work = finalize_(copy.deepcopy(model)).eval()
    ref = _outputs(work, example_input)
    macs = _macs(work, example_input)
    params = _params(work)
    heads, head_notes = _compact_heads(work)
    try:
        cg = channel_graph(work, example_input)
    except Exception as e:  # noqa: BLE001 (a model that does not run on its input either)
        note = _untraced(e)
        sizes = _sizes(work)
        notes = {n: [note] for n in sizes}
        return CompactResult(
            work, {}, notes, params, params, macs, macs, 0.0, traced=False, sizes_before=sizes,
            params_ideal=params, macs_ideal=macs,
        )  # fmt: skip
    plan = plan_compaction(cg)
    ideal_plan = plan_compaction(cg, ideal=True)
    tracer = cg.tracer
    del cg
    params_ideal, macs_ideal = _ideal(work, ideal_plan, example_input)
    sizes = _sizes(work)
    added = [
        n
        for n, spec in plan.layers.items()
        if spec.kind in ("conv", "linear") and spec.bias and work.get_submodule(n).bias is None
    ]
    shrink_(work, plan.layers)
    apply_folds(work, plan.bias_delta, plan.mean_delta, plan.layers)
    work.eval()
    folded = {}
    if fold_bn:
        for layer, norm in foldable_pairs(work, example_input):
            fold_pair_(work, layer, norm)
            folded[norm] = layer
    if channels_last:
        work = work.to(memory_format=torch.channels_last)
    diff = max_abs_diff(ref, _outputs(work, example_input))
    scale = max((float(t.abs().max()) for t in ref if t.numel()), default=1.0)
    if not diff <= tolerance * max(1.0, scale):
        raise RuntimeError(
            f"compaction changed the outputs by {diff:.3g} (tolerance {tolerance:g} x scale "
            f"{max(1.0, scale):.3g}); this is a bug in sparsegrain.compact, please report it"
        )
    params_after, macs_after = _params(work), _macs(work, example_input)
    notes = plan.notes
    for name, texts in head_notes.items():
        notes.setdefault(name, []).extend(texts)
    return CompactResult(
        model=work,
        layers=plan.layers,
        notes=notes,
        params_before=params,
        params_after=params_after,
        macs_before=macs,
        macs_after=macs_after,
        max_abs_diff=diff,
        sizes_before=sizes,
        bias_added=added,
        tracer=tracer,
        folded=folded,
        channels_last=channels_last,
        params_ideal=min(params_ideal, params_after),
        macs_ideal=min(macs_ideal, macs_after),
        heads=heads,
    )


def _untraced(e: Exception) -> str:
    reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
    return f"not compacted: the model could not be traced ({type(e).__name__}: {reason})"


def _compact_heads(work: nn.Module) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """Remove the attention heads the masks zeroed (``heads.compact_heads_``)."""
    return compact_heads_(work)


def _ideal(work: nn.Module, plan, example_input) -> tuple[int, int]:
    """Parameters and MACs of the model with every zero filter removed (``ideal`` plan). The
    parameters are counted on a copy shrunk by the plan; the MACs from ``work``'s profile, each
    layer's MACs scaled by the fraction of its weights the copy keeps (the ideal may ask what
    no module can take, such as a LayerNorm losing channels, so the copy is never run)."""
    probe = shrink_(copy.deepcopy(work), plan.layers)
    result = model_flops(profile(work, example_input), layer_weights(work))
    macs = result["total"]["dense"]
    for row in result["layers"]:
        try:
            before = work.get_submodule(row["name"]).weight.numel()
            after = probe.get_submodule(row["name"]).weight.numel()
        except AttributeError:
            continue
        macs -= row["dense"] - row["dense"] * after // before
    return _params(probe), int(macs)
