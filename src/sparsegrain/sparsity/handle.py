"""The public verbs ``sparsify_`` / ``finalize_`` and the training-side handle they return."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core.dist import DistInfo, check_masks
from ..core.errors import ConfigError
from ..core.onednn import guard_pointwise_strided_
from ..methods import METHODS
from ..recipe.config import SparsityConfig
from ..recipe.load import Recipe, load_recipe
from ..structures import global_sparsities, verify
from . import bn as bn_prune
from . import couple, heads, masking
from .masking import Layer


class Sparsifier:
    """Handle returned by ``sparsify_``; the same in the built-in trainer and in a user's loop.

    Call ``penalty()`` in the loss, ``step()`` once after every optimizer step, and ``finalize()``
    at the end. The clock in epochs is ``steps / steps_per_epoch``.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Any,
        *,
        steps_per_epoch: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        epochs: float | None = None,
        example_inputs: Any = None,
    ):
        cfg = sparsity_config(cfg)
        # A torch.compile'd model wraps the user's module: layers are named as in that module,
        # so that the handle's state loads into a handle on the plain model too.
        model = getattr(model, "_orig_mod", model)
        guard_pointwise_strided_(model)  # a oneDNN CPU fault in training (core/onednn.py)
        method_cls = METHODS.get(cfg.method)
        _check_steps_per_epoch(steps_per_epoch, cfg.method, method_cls.uses_clock)
        self.model = model
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.optimizer = optimizer
        self.epochs = epochs
        self.steps = 0
        self.finalized = False
        self.dist = DistInfo()  # set by the trainer under torchrun: masks are checked across ranks
        self.mask_version = 0  # bumped by every mask recomputation
        self._checked_version = 0
        self.layers: list[Layer] = masking.select_layers(
            model, cfg, prunes=method_cls.prunes, example_inputs=example_inputs
        )
        # Before the method: it may prune at attach (oneshot), with the coupled sets.
        self.couple_note = couple.assign(self.layers, model, cfg.couple, example_inputs)
        self.method = method_cls(self, cfg.params)
        self.method.attach()
        # After the method: a BatchNorm's masks start in step with the layer's (oneshot).
        self.bn_note = bn_prune.attach_norms(
            self.pruned, model, cfg.prune_bn, optimizer, example_inputs
        )

    # -- clock ---------------------------------------------------------------------------------
    @property
    def epoch(self) -> float:
        if self.steps_per_epoch is None:  # only methods without a clock get here (dense)
            return 0.0
        return self.steps / self.steps_per_epoch

    @property
    def pruned(self) -> list[Layer]:
        """The layers that get a structure (those left dense are excluded)."""
        return [layer for layer in self.layers if layer.structure is not None]

    # -- the loop's calls ----------------------------------------------------------------------
    def penalty(self) -> torch.Tensor | float:
        """Regularization term to add to the loss (zero unless the method regularizes)."""
        return self.method.penalty()

    def step(self) -> None:
        """Advance the clock by one optimizer step and let the method update masks/thresholds."""
        if self.finalized:
            raise RuntimeError("step() after finalize()")
        self.steps += 1
        self.method.on_step()
        if (
            self.dist.enabled
            and self.pruned
            and (self.mask_version != self._checked_version or self.steps % self.cfg.frequency == 0)
        ):
            check_masks(self.masks(), self.dist, f"step {self.steps}")
            self._checked_version = self.mask_version

    def finalize(self) -> nn.Module:
        """Bake zeros into plain weights and remove every parametrization."""
        if not self.finalized:
            self.method.finalize()
            self._final_masks = self.masks()
            self._final_bn_masks = self.bn_masks()
            for layer in self.layers:
                masking.remove(layer)
            self.finalized = True
        return self.model

    # -- masks ---------------------------------------------------------------------------------
    def masks(self) -> dict[str, torch.Tensor]:
        """Current bool masks of the pruned layers (the last ones once finalized)."""
        if self.finalized:
            return dict(self._final_masks)
        out = {}
        for layer in self.pruned:
            p = masking.parametrization(layer)
            mask = getattr(p, "mask", None)
            out[layer.name] = (mask != 0) if mask is not None else (layer.weight.detach() != 0)
        return out

    def bn_masks(self) -> dict[str, torch.Tensor]:
        """Current ``(C,)`` bool masks of the BatchNorms masked with a pruned layer's filters
        (``bn_prune``), by BatchNorm name (the last ones once finalized)."""
        if self.finalized:
            return dict(self._final_bn_masks)
        return {l.norm.name: masking.norm_mask(l.norm) for l in self.pruned if l.norm is not None}

    def drop_norms(self, note: str) -> None:
        """Stop masking BatchNorms (their masks are all ones before training): resuming a
        checkpoint written before they were masked, whose weights name them unmasked."""
        for layer in self.pruned:
            if layer.norm is not None:
                masking.remove_norm(layer.norm)
                layer.norm, layer.norm_note = None, note

    def sparsities_at(self, target: dict[str, float]) -> dict[str, float]:
        """Per-layer sparsities: as given (``scope: layer``) or from one global selection."""
        if self.cfg.scope == "layer":
            return target
        overall = sum(target[l.name] * l.param.numel() for l in self.pruned) / max(
            1, sum(l.param.numel() for l in self.pruned)
        )
        layers = {l.name: (l.weight.detach(), l.structure) for l in self.pruned}
        return global_sparsities(layers, overall, score=self.cfg.score)

    @torch.no_grad()
    def prune_to(self, target: dict[str, float]) -> None:
        """Recompute every pruned layer's mask from its current weights at the given sparsities;
        the layers of a coupled set (``sparsity.couple``) get one filter mask, chosen from all of
        their weights (``couple.masks``)."""
        weights = {layer.name: layer.weight.detach() for layer in self.pruned}
        self.set_masks(self.masks_for(weights, self.sparsities_at(target)))

    def attach(self, layer: Layer, parametrization: nn.Module | None = None) -> nn.Module:
        """Put ``parametrization`` (default: an all-ones ``masking.Mask``) on the layer's weight."""
        return masking.attach(layer, parametrization)

    @torch.no_grad()
    def masks_for(
        self,
        tensors: dict[str, torch.Tensor],
        sparsities: dict[str, float],
        score: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """The bool masks ``prune_to`` would install for ``tensors`` (one per pruned layer) at
        these per-layer sparsities: each layer's structure, one filter mask per coupled set, one
        head mask per attention module (``heads``); ``score`` overrides the layers' scores."""
        others = [layer for layer in self.pruned if not layer.block]
        out = couple.masks(others, tensors, sparsities, score=score)
        out.update(heads.masks(self.pruned, tensors, sparsities, score=score))
        return out

    def head_masks(self) -> dict[str, torch.Tensor]:
        """``(H,)`` bool per attention module pruned with ``head``: the heads kept."""
        return heads.head_masks(self.pruned, self.masks())

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor], clear_optimizer_state: bool = True) -> None:
        """Install masks a method computed itself and zero what they drop in the weights (and,
        unless told not to, in the optimizer state); BatchNorm masks follow."""
        self.mask_version += 1
        optimizer = self.optimizer if clear_optimizer_state else None
        for layer in self.pruned:
            masking.set_mask(layer, masks[layer.name], optimizer)

    def verify(self) -> dict[str, list[str]]:
        """Check every pruned layer's mask, and that its weight is zero where the mask drops,
        against its declared structure; returns the violations of the layers that have any."""
        out = {}
        for name, mask in self.masks().items():
            layer = next(l for l in self.pruned if l.name == name)
            problems = verify(mask, layer.structure, is_mask=True)
            stray = int((layer.weight.detach()[~mask] != 0).sum())
            if stray:
                problems.append(f"{stray} weights are non-zero where the mask drops them")
            if problems:
                out[name] = problems
        return out

    # -- reporting and state -------------------------------------------------------------------
    def report(self) -> list[dict[str, Any]]:
        """Per layer: name, shape, structure, target, achieved sparsity, note; for a layer
        whose BatchNorm is masked with it, ``bn`` (its name) and ``bn_masked`` (channels); for a
        coupled layer, ``coupled`` (its set) and ``coupled with: ...`` in the note."""
        rows = []
        bn_masks = self.bn_masks()
        for layer in self.layers:
            w = layer.weight.detach()
            row = {
                "name": layer.name,
                "shape": list(layer.shape),
                "structure": layer.structure.spec if layer.structure is not None else "dense",
                "target": layer.target if layer.structure is not None else 0.0,
                "achieved": float((w == 0).sum()) / w.numel(),
                "params": w.numel(),
                "note": layer.note,
            }
            bn_note = layer.norm_note if layer.structure is not None else ""
            if layer.norm is not None:
                dropped = int((~bn_masks[layer.norm.name]).sum())
                row.update(bn=layer.norm.name, bn_masked=dropped)
                bn_note = f"bn masked: {dropped} channels" if dropped else ""
            couple_note = couple.note(layer) if layer.structure is not None else ""
            if layer.coupled:
                row["coupled"] = list(layer.coupled)
            head_note = ""
            if layer.block and layer.structure is not None:
                row["attention"] = layer.block
                head_note = f"heads of '{layer.block}'"
            notes = (layer.note, bn_note, couple_note, head_note)
            row["note"] = "; ".join(n for n in notes if n)
            rows.append(row)
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "masks": self.masks(),
            "bn_masks": self.bn_masks(),
            "method": self.method.state_dict(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        masks = state["masks"]
        names = {layer.name for layer in self.pruned}
        if set(masks) != names:
            raise ConfigError(
                f"sparsity state is for layers {sorted(masks)}, this model prunes {sorted(names)}"
            )
        for layer in self.pruned:
            p = masking.parametrization(layer)
            if p is not None and hasattr(p, "mask"):
                if tuple(masks[layer.name].shape) != layer.shape:
                    raise ConfigError(
                        f"mask of '{layer.name}':\n  expected {list(layer.shape)}\n"
                        f"  got      {list(masks[layer.name].shape)}"
                    )
                p.mask.copy_(masks[layer.name])
        self._load_bn_masks(state.get("bn_masks"))
        self.method.load_state_dict(state.get("method", {}))

    def _load_bn_masks(self, saved: dict[str, torch.Tensor] | None) -> None:
        """Restore the BatchNorm masks as saved; a state without them (written before BatchNorms
        were masked) gets them from the layers' restored masks, which they follow."""
        layers = [layer for layer in self.pruned if layer.norm is not None]
        if saved is None:
            saved = {
                l.norm.name: masking.filters_kept(masking.parametrization(l).mask) for l in layers
            }
        names = {layer.norm.name for layer in layers}
        if set(saved) != names:
            raise ConfigError(
                f"sparsity state masks BatchNorms {sorted(saved)}, this model masks {sorted(names)}"
                " (sparsity.prune_bn or the model differs)"
            )
        for layer in layers:
            keep, c = saved[layer.norm.name], layer.norm.module.num_features
            if tuple(keep.shape) != (c,):
                raise ConfigError(
                    f"mask of BatchNorm '{layer.norm.name}':\n  expected [{c}]\n"
                    f"  got      {list(keep.shape)}"
                )
            masking.restore_norm_mask(layer.norm, keep)


def sparsify_(
    model: nn.Module,
    recipe: Any,
    *,
    steps_per_epoch: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    epochs: float | None = None,
    example_inputs: Any = None,
) -> Sparsifier:
    """Attach structures and masks to ``model`` in place and return the training-side handle.

    ``recipe``: a recipe path, a full recipe (its ``sparsity`` section is used), a ``sparsity``
    mapping or a ``SparsityConfig``; each goes through the same validation and defaults.
    ``steps_per_epoch`` (required by every method that prunes: ``start``, ``end`` and the other
    epochs of the recipe are turned into optimizer steps with it; give ``len(train_loader)``).
    ``optimizer`` (optional): its state of pruned entries is cleared whenever masks change.
    ``epochs`` (optional): the run's length, for methods whose defaults depend on it. A structure
    that does not fit a targeted layer is refused with a ``ValueError`` naming the layer.
    ``example_inputs`` (optional): an input of the model (a tensor, a tuple of positional
    inputs or a mapping of keyword inputs), run once to find the classifier the default
    exclusion leaves dense (``masking.classifier_layers``).
    """
    return Sparsifier(
        model,
        recipe,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        epochs=epochs,
        example_inputs=example_inputs,
    )


def sparsity_config(recipe: Any) -> SparsityConfig:
    """The validated ``sparsity`` section of any recipe form ``sparsify_`` takes. A
    ``SparsityConfig`` built directly is validated like a parsed one (its defaults filled in)."""
    if isinstance(recipe, Recipe):
        recipe = recipe.sparsity
    if isinstance(recipe, SparsityConfig):
        return SparsityConfig.parse(recipe.to_dict())
    if isinstance(recipe, dict) and "sparsity" not in recipe:
        return SparsityConfig.parse(recipe)
    if isinstance(recipe, (dict, str)) or hasattr(recipe, "__fspath__"):
        return load_recipe(recipe).sparsity
    raise ConfigError(f"recipe: expected a path, a mapping or a SparsityConfig, got {recipe!r}")


def _check_steps_per_epoch(steps_per_epoch: Any, method: str, needed: bool) -> None:
    if steps_per_epoch is None:
        if needed:
            raise ConfigError(
                f"sparsify_: steps_per_epoch is required by method '{method}': the recipe's "
                "start, end and other epochs are turned into optimizer steps with it (give the "
                "number of optimizer steps per epoch, e.g. len(train_loader))"
            )
        return
    if (
        isinstance(steps_per_epoch, bool)
        or not isinstance(steps_per_epoch, int)
        or (steps_per_epoch < 1)
    ):
        raise ConfigError(f"steps_per_epoch: expected an integer >= 1, got {steps_per_epoch!r}")


def finalize_(model: nn.Module) -> nn.Module:
    """Bake every weight parametrization of ``model``, and the masks on BatchNorm biases, into
    plain tensors, without a handle. Safe on a deep copy: the model it was copied from keeps
    its parametrizations."""
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        _own_class(module)
        for name, plist in list(module.parametrizations.items()):
            # Every weight (an attention module's fused in_proj_weight too), as always; other
            # tensors (a BatchNorm's bias) where sparsegrain masked them, leaving a user's own
            # parametrizations of them alone.
            if name in ("weight", "in_proj_weight") or isinstance(plist[0], masking.Mask):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                masking.positive_zeros_(getattr(module, name))
    return model


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own. ``remove_parametrizations`` deletes the
    tensor's property from ``type(module)``, PyTorch's generated ``Parametrized*`` class, and
    ``copy.deepcopy`` of a parametrized model shares that class with the original: baking the
    copy would take ``weight`` away from the original's modules too."""
    cls = type(module)
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)
