"""Which layers are pruned, and how masks are attached, applied and baked in.

Masks are ``torch.nn.utils.parametrize`` parametrizations: the forward pass uses
``original * mask``, so it always sees exact zeros, and the optimizer keeps the same Parameter
object (``parametrizations.weight.original``). When a mask changes, pruned entries of the original
weight and of the optimizer state are zeroed; from then on their gradient is zero (masked through
the product), weight decay of a zero is zero and the cleared momentum stays zero, so a fixed mask is
never regrown. ``remove`` bakes the result into a plain ``weight`` Parameter.

A layer may carry a ``Norm``: the BatchNorm that reads its output directly (``bn_prune`` finds
it). Its ``weight`` and ``bias`` get the same kind of mask, one entry per channel, and
``set_mask`` keeps it in step with the layer's filters: channel ``k`` is dropped exactly when
every weight of filter ``k`` is, with the same zeroing of parameters and optimizer state.

Layers are chosen among the candidates of ``candidates`` (Conv, Linear, Hugging Face ``Conv1D``,
the fused ``in_proj_weight`` of ``nn.MultiheadAttention``); the first conv and the classifier are
left dense by default (``classifier``). A ``Conv1D`` weight is stored ``(in, out)``, so its
structure is wrapped in ``structures.Transposed`` and groups keep their meaning on the
``(out, in)`` view. The ``head`` structure is bound here to the projections of the attention
modules ``attention.find_attention`` finds (``Layer.block``). A Parameter held by several modules
is masked once for all of them (``ties``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core.errors import ConfigError
from ..recipe.config import SparsityConfig
from ..structures import Head, Structure, Transposed, parse_structure
from .attention import AttentionBlock, Part, find_attention, is_conv1d
from .candidates import LAYER_TYPES, candidate_tensors
from .candidates import candidate_layers as candidate_layers  # imported from here by callers
from .classifier import default_exclude
from .ties import tie_layers


@dataclass
class Norm:
    """The BatchNorm that reads a pruned layer's output directly (found by ``bn_prune``)."""

    name: str
    module: nn.Module


NORM_TENSORS = ("weight", "bias")  # gamma and beta: both zero makes BN's output exactly 0


@dataclass
class Layer:
    """One targeted layer: where it is, what structure and target it gets."""

    name: str
    module: nn.Module
    structure: Structure | None  # None: left dense
    target: float
    initial: float
    score: str
    note: str = ""  # why the layer got what it got (fallback, default exclusion, ...)
    extra: dict = field(default_factory=dict)
    norm: Norm | None = None  # BatchNorm whose channels follow this layer's dropped filters
    norm_note: str = ""  # why no BatchNorm is masked with this layer, where that needs saying
    coupled: tuple[str, ...] = ()  # the coupled set it shares one filter mask with (``couple``)
    couple_note: str = ""  # why it is not coupled, where that needs saying
    tensor: str = "weight"  # the masked tensor's name on ``module`` (MHA: ``in_proj_weight``)
    block: str = ""  # the attention module whose head mask it follows (``head`` structure)
    ties: tuple[tuple[str, nn.Module, str], ...] = ()  # other holders of its Parameter

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight (mask applied when one is attached), as stored."""
        return getattr(self.module, self.tensor)

    @property
    def param(self) -> nn.Parameter:
        """The trainable Parameter the optimizer holds."""
        if parametrize.is_parametrized(self.module, self.tensor):
            return self.module.parametrizations[self.tensor].original
        return getattr(self.module, self.tensor)

    @property
    def transposed(self) -> bool:
        """Whether the weight is stored ``(in, out)`` (Hugging Face ``Conv1D``)."""
        return is_conv1d(self.module)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def parametrization(self) -> nn.Module | None:
        """The parametrization attached to the weight (a ``Mask``, or a method's own)."""
        return parametrization(self)


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _matches_any(pattern: str, names) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def _bind(structure: Structure, part: Part | None, block: AttentionBlock | None, transposed: bool):
    """The structure as it applies to one stored tensor: ``head`` bound to the tensor's role in
    its attention module, everything wrapped in ``Transposed`` for a weight stored (in, out)."""
    if isinstance(structure, Head) and part is not None:
        if structure.heads not in (0, block.num_heads):
            raise ConfigError(
                f"structure {structure.spec}: attention module '{block.name}' has "
                f"{block.num_heads} heads; write 'head' (the number is read from the module)"
            )
        structure = Head(block.num_heads, part.kind)
    return Transposed(structure) if transposed else structure


def _resolve_structure(
    name: str, shape, spec: str, fallback: str, bind=lambda st: st
) -> tuple[Structure | None, str]:
    structure = bind(parse_structure(spec))
    reason = structure.fits(shape)
    if reason is None:
        return structure, ""
    if fallback == "error":
        raise ConfigError(
            f"layer '{name}' {list(shape)}: {reason}; set sparsity.fallback to 'dense' or to a "
            f"structure, or exclude the layer"
        )
    if fallback == "dense":
        return None, f"left dense: {reason}"
    alt = bind(parse_structure(fallback))
    alt_reason = alt.fits(shape)
    if alt_reason is not None:
        raise ConfigError(f"layer '{name}' {list(shape)}: {reason}, and fallback {alt_reason}")
    return alt, f"fallback {alt.spec}: {reason}"


def select_layers(
    model: nn.Module, cfg: SparsityConfig, *, prunes: bool = True, example_inputs=None
) -> list[Layer]:
    """Resolve include/exclude/types/overrides/fallback into the list of targeted layers.

    Patterns are shell-style globs on layer names (``layer1.*``, ``*.conv2``,
    ``*.in_proj_weight``); overrides apply in the order written, later ones winning. A pattern
    (of ``include``, ``exclude`` or ``overrides``) that matches no candidate layer is refused:
    it is a typo or another model's; so is an override that matches only layers left out by
    ``include``/``exclude`` (it would change nothing), and an override ``initial`` above the
    target of a layer it applies to. ``prunes=False`` (a method that prunes nothing, the dense
    baseline): every layer is left dense, with the note "dense run" where it was selected.
    ``example_inputs``: an input of the model, for finding its classifier (``classifier_layers``).
    A layer whose Parameter another module holds too is masked with it (module doc: tied weights).
    """
    for t in cfg.types:
        if t not in LAYER_TYPES:
            raise ConfigError(f"sparsity.types: unknown '{t}'; choose from: conv, linear")
    exclude = default_exclude(model, example_inputs) if cfg.exclude is None else cfg.exclude
    candidates = candidate_tensors(model, cfg.types)
    names = [n for n, _, _ in candidates]
    for pattern in cfg.overrides:
        if not _matches_any(pattern, names):
            raise ConfigError(
                f"sparsity.overrides: pattern '{pattern}' matches no layer; candidates "
                f"({', '.join(cfg.types)}): {', '.join(names) or 'none'}"
            )
    every = [n for n, _, _ in candidate_tensors(model)]  # a typo, not a choice of layer types
    for key, patterns in (("include", cfg.include), ("exclude", cfg.exclude or [])):
        for pattern in patterns:
            if not _matches_any(pattern, every):
                raise ConfigError(
                    f"sparsity.{key}: pattern '{pattern}' matches no layer; candidates "
                    f"(conv, linear): {', '.join(every) or 'none'}"
                )
    parts = {p.layer: (b, p) for b in find_attention(model) for p in b.parts}
    layers = []
    selected: set[str] = set()  # the override patterns that match a layer that is pruned
    for name, module, tensor in candidates:
        skip = ""
        if cfg.include and not _matches(name, cfg.include):
            skip = "not in sparsity.include"
        elif _matches(name, exclude):
            skip = "excluded" + (
                " by default (first conv / classifier)"
                if cfg.exclude is None
                else " by sparsity.exclude"
            )
        if skip or not prunes:
            note = skip or "dense run"
            layers.append(Layer(name, module, None, 0.0, 0.0, cfg.score, note, tensor=tensor))
            continue
        applied = [p for p in cfg.overrides if fnmatch.fnmatchcase(name, p)]
        keys = {
            "target": cfg.target,
            "initial": cfg.initial,
            "structure": cfg.structure,
            "score": cfg.score,
            "fallback": cfg.fallback,
        }
        for pattern in applied:
            keys.update(cfg.overrides[pattern])
        given = [p for p in applied if "initial" in cfg.overrides[p]]
        if given and keys["initial"] > keys["target"]:
            raise ConfigError(
                f"sparsity.overrides.{given[-1]}.initial: must be in [0, {keys['target']:g}] "
                f"(the target of layer '{name}'), got {keys['initial']:g}"
            )
        selected.update(applied)
        shape = tuple(getattr(module, tensor).shape)
        block, part = parts.get(name, (None, None))

        def bind(st, part=part, block=block, module=module):
            return _bind(st, part, block, is_conv1d(module))

        if keys["target"] == 0:
            structure, note = None, "left dense: target 0"
        else:
            structure, note = _resolve_structure(
                name, shape, keys["structure"], keys["fallback"], bind
            )
        head = isinstance(getattr(structure, "inner", structure), Head)
        layers.append(
            Layer(
                name,
                module,
                structure,
                float(keys["target"]),
                min(float(keys["initial"]), float(keys["target"])),
                keys["score"],
                note,
                tensor=tensor,
                block=block.name if head and block is not None else "",
            )
        )
    for pattern in cfg.overrides:
        if prunes and pattern not in selected:
            left = [f"{layer.name} ({layer.note})" for layer in layers
                    if fnmatch.fnmatchcase(layer.name, pattern)]  # fmt: skip
            raise ConfigError(
                f"sparsity.overrides: pattern '{pattern}' matches only layers that are not "
                f"pruned: {', '.join(left)}; change sparsity.include/exclude to prune them, or "
                "drop the override"
            )
    tie_layers(model, layers)
    if prunes and all(layer.structure is None for layer in layers) and cfg.target > 0:
        raise ConfigError(
            "sparsity: no layer selected to prune (include/exclude/types leave nothing); "
            f"candidates: {', '.join(n for n, _, _ in candidate_tensors(model))}"
        )
    return layers


class Mask(nn.Module):
    """Parametrization ``w -> w * mask``; the mask is a same-shape float buffer (1 keep, 0 drop).

    Every mask update writes the buffer in place (``set_mask``, ``load_state_dict``: ``copy_``)
    and never replaces it: a ``torch.compile``d model reads it as an input of its graph, so a
    new mask changes none of the compiled graph's guards and nothing recompiles."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def attach(layer: Layer, param: nn.Module | None = None) -> nn.Module:
    """Attach a parametrization (default: an all-ones ``Mask``) to the layer's weight, and the
    same object to every other holder of its Parameter (``Layer.ties``)."""
    module = layer.module
    for where, m, t in ((layer.name, module, layer.tensor), *layer.ties):
        if parametrize.is_parametrized(m, t):
            raise ConfigError(f"layer '{where}' already has a parametrized {t}")
    param = Mask(layer.weight) if param is None else param
    parametrize.register_parametrization(module, layer.tensor, param)
    for _, m, t in layer.ties:
        parametrize.register_parametrization(m, t, param)
    return param


def parametrization(layer: Layer) -> nn.Module | None:
    if not parametrize.is_parametrized(layer.module, layer.tensor):
        return None
    return layer.module.parametrizations[layer.tensor][0]


@torch.no_grad()
def set_mask(layer: Layer, mask: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """Install ``mask`` (bool, weight-shaped) and zero what it drops in the weight and optimizer
    state, so that nothing pruned can come back through momentum or weight decay."""
    p = parametrization(layer)
    if p is None or not hasattr(p, "mask"):
        raise RuntimeError(f"layer '{layer.name}' has no mask attached")
    p.mask.copy_(mask)
    keep = p.mask
    layer.param.mul_(keep).add_(0.0)
    if optimizer is not None:
        clear_optimizer_state(optimizer, layer.param, keep)
    if layer.norm is not None:
        set_norm_mask(layer.norm, filters_kept(keep), optimizer)


def filters_kept(mask: torch.Tensor) -> torch.Tensor:
    """``(K,)`` bool: the filters (output channels, axis 0) with at least one kept weight."""
    return (mask != 0).reshape(mask.shape[0], -1).any(dim=1)


def attach_norm(norm: Norm) -> None:
    """Attach an all-ones ``Mask`` to the BatchNorm's weight and bias."""
    for t in NORM_TENSORS:
        if parametrize.is_parametrized(norm.module, t):
            raise ConfigError(f"BatchNorm '{norm.name}' already has a parametrized {t}")
        parametrize.register_parametrization(norm.module, t, Mask(getattr(norm.module, t)))


def norm_mask(norm: Norm) -> torch.Tensor:
    """``(C,)`` bool: the BatchNorm channels kept now."""
    return norm.module.parametrizations.weight[0].mask != 0


@torch.no_grad()
def set_norm_mask(norm: Norm, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """Install ``keep`` (``(C,)`` bool) on the BatchNorm's weight and bias and zero what it drops
    in both and in their optimizer state: the dropped channels' output is then exactly 0."""
    for t in NORM_TENSORS:
        plist = norm.module.parametrizations[t]
        mask = plist[0].mask
        mask.copy_(keep)
        plist.original.mul_(mask).add_(0.0)
        if optimizer is not None:
            clear_optimizer_state(optimizer, plist.original, mask)


@torch.no_grad()
def restore_norm_mask(norm: Norm, keep: torch.Tensor) -> None:
    """Put back a saved mask as is (resume: the parameters come from the same checkpoint)."""
    for t in NORM_TENSORS:
        norm.module.parametrizations[t][0].mask.copy_(keep)


def remove_norm(norm: Norm) -> None:
    """Bake the BatchNorm's masked weight and bias into plain Parameters."""
    for t in NORM_TENSORS:
        if parametrize.is_parametrized(norm.module, t):
            parametrize.remove_parametrizations(norm.module, t, leave_parametrized=True)
            positive_zeros_(getattr(norm.module, t))


@torch.no_grad()
def clear_optimizer_state(optimizer, param: torch.Tensor, keep: torch.Tensor) -> None:
    """Zero the per-element optimizer state (momentum, Adam moments) of pruned entries."""
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.mul_(keep)


def remove(layer: Layer) -> None:
    """Bake the parametrized weight (and the BatchNorm's, where one is masked with the layer)
    into plain Parameters and drop the parametrizations."""
    for m, t in ((layer.module, layer.tensor), *((m, t) for _, m, t in layer.ties)):
        if parametrize.is_parametrized(m, t):
            parametrize.remove_parametrizations(m, t, leave_parametrized=True)
            positive_zeros_(getattr(m, t))
    if layer.norm is not None:
        remove_norm(layer.norm)


@torch.no_grad()
def positive_zeros_(w: torch.Tensor) -> None:
    """Turn the -0.0 that ``w * mask`` leaves for pruned negative weights into +0.0 (IEEE:
    -0 + 0 = +0), so baked weights have one zero, which the compressed format stores exactly.
    Done once when baking rather than in every forward pass."""
    w.add_(0.0)
