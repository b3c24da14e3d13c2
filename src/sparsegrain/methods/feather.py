"""Feather (Glentis Georgoulakis et al., BMVC 2023): sparse training with a straight-through
thresholding operator, gradient scaling and one global threshold.

Every pruned weight ``w`` enters the forward pass as

    ``sign(w) * (|w|^p - T^p)^(1/p)`` where ``|w| > T``, else 0        (p = 3 in the paper)

and the backward pass is straight-through: the gradient reaches ``w`` multiplied by 1 where
``|w| > T`` and by ``theta`` where the weight is pruned (``theta = 0.5`` when the final sparsity
is above 0.95, else 1; the paper's gradient scaling). ``T`` is recomputed after every optimizer
step as the exact ``s_t`` quantile (``quantile.exact_quantile``: ``torch.quantile``'s linear
interpolation, found by selection) of ``|w|`` over all pruned weights (``scope: global``, the
paper's choice) or of each layer's own weights (``scope: layer``, a layer-wise variant). Nothing
is frozen: a pruned weight keeps its (scaled) gradient, its momentum and its weight decay, and can
come back. ``finalize`` bakes the operator's output, so the final weights are the thresholded
values (zeros included). Biases and BN parameters are never targeted.

The ramp: ``s_t`` follows the cubic rule (``schedules.cubic_sparsity``, Zhu & Gupta 2017) from
``sparsity.initial`` (default 0) at ``start`` to the target at ``end``, in epochs. ``start``
defaults to 0 and ``end`` to half of training (``epochs / 2``, from the ``epochs`` the handle
was given; the built-in trainer always gives it); in a user's loop without ``epochs=``,
``sparsity.end`` is required. The recipe keys ``ramp_start`` / ``ramp_end`` name the same two
epochs as ``start`` / ``end``; give either (both only if they agree). Before the ramp starts
(``s_t = 0``) ``T = 0``: the operator is then the identity, not a cut at ``min |w|``.

Per-layer ``target`` overrides: under ``scope: layer`` each layer ramps to its own target;
under ``scope: global`` they only set the one quantile's ``q`` (their size-weighted mean), and
the global threshold then decides how that sparsity is spread over layers. ``theta``'s default
rule reads the final sparsity that sets the layer's threshold (global mean, or the layer's own).
Without ``sparsity.scope`` in the recipe, Feather uses ``global``, the paper's setting.

Method keys (beside the common ones): ``p`` (default 3), ``theta`` (default: the rule above),
``ramp_start``, ``ramp_end``. ``frequency`` and ``score`` are not used (``T`` moves every step and
the score is ``|w|``). Structure: ``fine`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..core.quantile import exact_quantile
from ..core.schedules import cubic_sparsity
from ..core.validate import Range
from .base import Method


def default_theta(final_sparsity: float) -> float:
    """Gradient scale on pruned weights: 0.5 above 95% final sparsity, else 1 (Feather)."""
    return 0.5 if final_sparsity > 0.95 else 1.0


class _Threshold(torch.autograd.Function):
    """Forward: the p-thresholding operator; backward: straight-through, ``theta`` where pruned."""

    @staticmethod
    def forward(ctx, w: Tensor, t: Tensor, p: float, theta: float) -> Tensor:
        # sign(w) (|w|^p - T^p)^(1/p) = w * (1 - (T/|w|)^p)^(1/p), which is exactly w at T = 0.
        # Where |w| <= T the factor is NaN (or inf); masked_fill replaces it by 0.
        a = w.abs()
        drop = a <= t
        if torch.compiler.is_compiling():
            # Out of place: the compiler fuses the chain into one kernel, and torch.compile
            # cannot trace ``out=`` into a channels_last buffer (a graph break per layer).
            a = (1.0 - (t / a).pow(p)).pow(1.0 / p).mul(w).masked_fill(drop, 0.0)
        else:
            # In place on one buffer (this runs over every pruned weight twice a step).
            torch.div(t, a, out=a)
            a.pow_(p).neg_().add_(1.0).pow_(1.0 / p).mul_(w)
            a.masked_fill_(drop, 0.0)
        ctx.theta = theta
        if theta != 1.0:
            ctx.save_for_backward(drop)
        return a

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.theta == 1.0:
            return grad, None, None, None
        (drop,) = ctx.saved_tensors
        return torch.where(drop, grad * ctx.theta, grad), None, None, None


def feather_threshold(w: Tensor, threshold: Tensor | float, p: float = 3.0, theta: float = 1.0):
    """``sign(w) * (|w|^p - T^p)^(1/p)`` where ``|w| > T``, else 0; gradient 1 on kept entries
    and ``theta`` on pruned ones (straight-through, Feather's gradient scaling)."""
    t = torch.as_tensor(threshold, dtype=w.dtype, device=w.device)
    return _Threshold.apply(w, t, float(p), float(theta))


class FeatherThreshold(nn.Module):
    """Parametrization ``w -> feather_threshold(w, threshold, p, theta)``.

    ``threshold`` (0-dim) is set by the method after every step; ``mask`` (bool, weight-shaped)
    is ``|w| > threshold`` at that moment, for ``Sparsifier.masks()`` and checkpoints.
    """

    def __init__(self, weight: Tensor, p: float, theta: float):
        super().__init__()
        self.p, self.theta = float(p), float(theta)
        zero = torch.zeros((), dtype=weight.dtype, device=weight.device)
        self.register_buffer("threshold", zero, persistent=False)
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool), persistent=False)

    def forward(self, w: Tensor) -> Tensor:
        return _Threshold.apply(w, self.threshold, self.p, self.theta)

    def extra_repr(self) -> str:
        return f"p={self.p}, theta={self.theta}, threshold={float(self.threshold):.4g}"


def _flat_view(t: Tensor) -> Tensor | None:
    """All elements of ``t`` as a 1-D view in memory order (contiguous or channels_last), or None
    for other layouts. The order differs between layouts, which is fine for a quantile."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return None


class Feather(Method):
    """Straight-through p-thresholding with one global threshold on a cubic ramp (Feather)."""

    name = "feather"
    default_scope = "global"
    regrows = True
    structures = ("fine",)  # one threshold on |w|
    couples = False  # one threshold on |w| over all layers, never a filter mask

    @dataclass
    class Params:
        p: Annotated[float, Range(0, lo_open=True)] = 3.0
        # None: 0.5 above 95% final sparsity, else 1
        theta: Annotated[float | None, Range(0, 1)] = None
        ramp_start: Annotated[float | None, Range(0)] = None  # epochs; None: sparsity.start
        # epochs; None: sparsity.end, else half of training
        ramp_end: Annotated[float | None, Range(0)] = None

    def __init__(self, handle, params: dict[str, Any]):
        super().__init__(handle, params)
        self.start = 0.0
        self.end = 0.0
        self.sparsity = 0.0  # the current s_t (size-weighted over layers)
        self.buffers: dict[str, Tensor] = {}  # layer name -> its parametrization's threshold

    # -- attach --------------------------------------------------------------------------------
    def attach(self) -> None:
        h = self.handle
        for layer in h.pruned:
            if layer.structure.name != "fine":
                raise ConfigError(
                    f"sparsity.structure: method 'feather' supports 'fine' only (one threshold on "
                    f"|w|); layer '{layer.name}' has '{layer.structure.spec}'"
                )
        self.start, self.end = self.resolve_ramp()
        if not h.pruned:
            return
        overall = self.overall(self.finals())
        for layer in h.pruned:
            final = overall if h.cfg.scope == "global" else layer.target
            theta = default_theta(final) if self.params.theta is None else self.params.theta
            param = h.attach(layer, FeatherThreshold(layer.param, self.params.p, theta))
            self.buffers[layer.name] = param.threshold  # still readable after finalize
            layer.extra["theta"] = theta
        self.update()

    def resolve_ramp(self) -> tuple[float, float]:
        """``(start, end)`` of the ramp in epochs, from ramp_* or start/end or the run length."""
        cfg, prm = self.handle.cfg, self.params
        if prm.ramp_start is not None and cfg.start not in (0.0, prm.ramp_start):
            raise ConfigError(
                f"sparsity.ramp_start ({prm.ramp_start}) and sparsity.start ({cfg.start}) "
                "disagree; give one of them"
            )
        if prm.ramp_end is not None and cfg.end is not None and cfg.end != prm.ramp_end:
            raise ConfigError(
                f"sparsity.ramp_end ({prm.ramp_end}) and sparsity.end ({cfg.end}) disagree; "
                "give one of them"
            )
        start = cfg.start if prm.ramp_start is None else prm.ramp_start
        end = cfg.end if prm.ramp_end is None else prm.ramp_end
        if end is None:
            epochs = self.handle.epochs
            if epochs is None:
                raise ConfigError(
                    "sparsity.end: method 'feather' needs the epoch its sparsity ramp ends; give "
                    "sparsity.end (or ramp_end), or pass epochs= to sparsify_ so that it "
                    "defaults to half of training"
                )
            end = epochs / 2
        if end < start:
            raise ConfigError(
                f"sparsity.end: the feather ramp must end at or after its start ({start}), "
                f"got {end}"
            )
        return float(start), float(end)

    # -- schedule ------------------------------------------------------------------------------
    def finals(self) -> dict[str, float]:
        return {layer.name: layer.target for layer in self.handle.pruned}

    def targets_at(self, t: float) -> dict[str, float]:
        """Per-layer ``s_t`` at clock ``t`` (epochs): the cubic ramp from ``initial``."""
        return {
            layer.name: cubic_sparsity(
                t, initial=layer.initial, final=layer.target, start=self.start, end=self.end
            )
            for layer in self.handle.pruned
        }

    def overall(self, targets: dict[str, float]) -> float:
        """Size-weighted mean of per-layer sparsities: the global quantile's ``q``."""
        layers = self.handle.pruned
        if len({targets[layer.name] for layer in layers}) == 1:
            return targets[layers[0].name]  # exact: q is then the target itself
        total = sum(layer.param.numel() for layer in layers)
        return sum(targets[layer.name] * layer.param.numel() for layer in layers) / max(total, 1)

    # -- thresholds ----------------------------------------------------------------------------
    @torch.no_grad()
    def update(self) -> None:
        """Recompute ``T`` at the handle's clock from the current weights; refresh the masks."""
        layers = self.handle.pruned
        if not layers:
            return
        targets = self.targets_at(self.handle.epoch)
        self.sparsity = self.overall(targets)
        zero = torch.zeros((), dtype=layers[0].param.dtype, device=layers[0].param.device)
        if self.handle.cfg.scope == "layer":
            for layer in layers:
                a = layer.param.detach().abs()
                s = targets[layer.name]
                self._install(layer, zero if s == 0 else exact_quantile(a, s), a)
            return
        # One |w| buffer for all layers, each in its own memory order (no copy of a layout).
        sizes = [layer.param.numel() for layer in layers]
        flat = torch.empty(sum(sizes), dtype=zero.dtype, device=zero.device)
        for layer, part in zip(layers, flat.split(sizes)):
            w = layer.param.detach()
            view = _flat_view(w)
            torch.abs(w.reshape(-1) if view is None else view, out=part)
        t = zero if self.sparsity == 0 else exact_quantile(flat, self.sparsity)
        for layer, part in zip(layers, flat.split(sizes)):
            self._install(layer, t, part)

    @staticmethod
    def _install(layer, threshold: Tensor, abs_w: Tensor) -> None:
        """Set the layer's ``T`` and its mask ``|w| > T``; ``abs_w`` is ``|w|``, weight-shaped
        or flat in the weight's memory order (then used only if the mask has that layout)."""
        p = layer.parametrization
        p.threshold.copy_(threshold)
        if abs_w.shape == p.mask.shape:
            torch.gt(abs_w, p.threshold, out=p.mask)
            return
        view = _flat_view(p.mask)
        w = layer.param
        if view is not None and p.mask.stride() == w.stride() and _flat_view(w) is not None:
            torch.gt(abs_w, p.threshold, out=view)
        else:
            torch.gt(w.detach().abs(), p.threshold, out=p.mask)

    # -- hooks ---------------------------------------------------------------------------------
    def on_step(self) -> None:
        self.update()

    @torch.no_grad()
    def finalize(self) -> None:
        # The baked weights are the operator's output; make the final masks exactly their
        # non-zeros. They equal |w| > T except where rounding zeroes a kept entry's output
        # ((T/|w|)^p rounding to 1 for p < 1, or an underflow on subnormal weights).
        for layer in self.handle.pruned:
            p = layer.parametrization
            p.mask.copy_(layer.weight.detach() != 0)

    def thresholds(self) -> dict[str, float]:
        """The current threshold of every pruned layer (one shared value under global scope)."""
        return {name: float(t) for name, t in self.buffers.items()}

    def metrics(self) -> dict[str, float]:
        """The ramp's ``s_t`` and, under global scope, the threshold ``T`` now."""
        out = {"feather_s_t": self.sparsity}
        if self.handle.cfg.scope == "global" and self.handle.pruned:
            out["feather_threshold"] = next(iter(self.thresholds().values()))
        return out

    def summary_extra(self) -> dict[str, Any]:
        thetas = sorted({layer.extra.get("theta", 1.0) for layer in self.handle.pruned})
        return {
            "feather": {
                "p": self.params.p,
                "theta": thetas[0] if len(thetas) == 1 else thetas,
                "ramp": [self.start, self.end],
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds(), "sparsity": self.sparsity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``T`` as saved (the handle has restored the masks); without it, recompute."""
        saved = state.get("thresholds")
        if not saved:
            self.update()
            return
        names = {layer.name for layer in self.handle.pruned}
        if set(saved) != names:
            raise ConfigError(
                f"feather state is for layers {sorted(saved)}, this model prunes {sorted(names)}"
            )
        for layer in self.handle.pruned:
            layer.parametrization.threshold.fill_(float(saved[layer.name]))
        self.sparsity = float(state.get("sparsity", 0.0))
