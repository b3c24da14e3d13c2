"""StructADMM (Zhang et al., arXiv 1807.11091): ADMM dynamic regularization, then hard pruning.

Pruning is the constrained problem ``min f(W) s.t. W_i in S_i`` (eq. 1), ``S_i`` the weights of
layer ``i`` that keep the layer's target share of groups of its structure. ADMM splits it into
``W`` and a copy ``Z`` constrained to ``S_i``, with the scaled dual ``U`` (eqs. 4-6):

- W-step: train on ``f(W) + sum_i rho/2 ||W_i - Z_i + U_i||_F^2`` (``penalty``) by SGD, for
  ``admm_epochs`` epochs (one ADMM period);
- Z-step: ``Z_i = Pi_S(W_i + U_i)``, the Euclidean projection: keep the groups of largest L2
  norm (``structure.mask(.., score="l2")``; fixed, whatever ``sparsity.score`` says);
- U-step: ``U_i = U_i + W_i - Z_i``.

With ``sparsity.couple`` the layers of a coupled set (``couple``) are projected together, in the
Z-steps and the hard prune: one filter mask for all of them (``Admm._project`` says how).

``Z`` starts at ``Pi_S(W)`` and ``U`` at zero, as in the authors' code (``admm_initialization``).
After ``admm_periods`` periods, i.e. at epoch ``admm_epochs * admm_periods``, every pruned layer is
hard-pruned to ``Pi_S(W)`` (the authors' ``hard_prune`` projects ``W`` itself), the optimizer's
state is cleared entirely, and the rest of the run retrains with the masks fixed.

Choices taken from the authors' public code, where the paper is silent:
- ``rho`` defaults to 1e-3, their ``ADMM(..., rho=0.001)``; ``rho_growth`` multiplies rho after
  every Z/U update (their ``admm_multi_rho_scheduler``: 1.1 to 1.3), capped at ``rho_max``
  (theirs: 1). ``U`` is not rescaled when rho changes, as in their code (Boyd et al. 2011,
  sec. 3.4.1, would scale it by ``rho_old / rho_new``).
- The learning rate restarts every ADMM period (their ``admm_adjust_learning_rate``): here the
  recipe's schedule runs over one period and starts again (``lr_clock``); during retraining it
  runs once over the remaining epochs. ``train.step_size``, ``milestones`` and ``warmup_epochs``
  count epochs within the phase (``schedule: step`` with ``step_size = admm_epochs / 3`` and
  ``gamma: 0.1`` is the authors' schedule); ``train.lr_at_freeze`` does not apply.
- The hard prune is placed by ``admm_periods`` (not by an epoch): it is the end of the last
  period, epoch ``admm_epochs * admm_periods``, which must fit in the run.

Progress is the primal residual ``||W - Z||_F / ||W||_F`` after each Z-step, per layer and over
all pruned layers (``history``; in ``summary.json`` under ``admm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch

from ..core.errors import ConfigError
from ..core.validate import EPOCH_LIMIT, Range, check_range
from ..structures import global_sparsities
from .base import Method

SCORE = "l2"  # the Euclidean projection onto "keep k groups" keeps the k largest-L2 groups


def projection(w: torch.Tensor, layer, sparsity: float) -> torch.Tensor:
    """``Pi_S(w)``: ``w`` with all but its largest-L2 groups of ``layer.structure`` zeroed."""
    return w * layer.structure.mask(w, sparsity, score=SCORE)


def relative_residual(w: torch.Tensor, z: torch.Tensor) -> float:
    """``||w - z||_F / ||w||_F`` (0 for an all-zero ``w``)."""
    norm = float(torch.linalg.vector_norm(w))
    return float(torch.linalg.vector_norm(w - z)) / norm if norm > 0 else 0.0


class Admm(Method):
    """StructADMM: ADMM regularization towards the structure, hard prune, masked retraining."""

    name = "admm"
    needs_init = True

    @dataclass
    class Params:
        """Keys of ``sparsity`` for ``method: admm``."""

        # penalty weight at the start (authors' code: 0.001)
        rho: Annotated[float, Range(0, lo_open=True)] = 1e-3
        # rho *= rho_growth after every Z/U update; 1 = constant
        rho_growth: Annotated[float, Range(1)] = 1.0
        rho_max: Annotated[float | None, Range(0, lo_open=True)] = None  # cap on rho; None: none
        # epochs per ADMM period (one W-step, then one Z/U update)
        admm_epochs: Annotated[int, Range(1, limit=EPOCH_LIMIT)] = 3
        # periods before the hard prune; 0 = hard-prune at once
        admm_periods: Annotated[int, Range(0, limit=EPOCH_LIMIT)] = 2

        def validate(self) -> None:
            check_range("sparsity", "rho_max", self.rho_max, self.rho)

    def __init__(self, handle, params: dict[str, Any]):
        super().__init__(handle, params)
        self.rho = self.params.rho
        self.periods = 0  # Z/U updates done
        self.hard_pruned = False
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, Any]] = []  # one row per Z/U update

    @property
    def prune_epoch(self) -> int:
        """Epoch of the hard prune: the end of the last ADMM period."""
        return self.params.admm_epochs * self.params.admm_periods

    # -- hooks ---------------------------------------------------------------------------------
    def attach(self) -> None:
        super().attach()
        epochs = self.handle.epochs
        if epochs is not None and self.prune_epoch > epochs:
            raise ConfigError(
                f"sparsity.admm_periods: admm_epochs * admm_periods = {self.prune_epoch} epochs "
                f"of ADMM does not fit in train.epochs = {epochs}"
            )
        with torch.no_grad():
            weights = self._weights()
            self.Z = self._project(weights, self._sparsities(weights))
            self.U = {name: torch.zeros_like(w) for name, w in weights.items()}
        if self.params.admm_periods == 0:
            self.hard_prune()

    def penalty(self) -> torch.Tensor | float:
        """``rho/2 * sum_i ||W_i - Z_i + U_i||_F^2`` over the pruned layers (0 once pruned)."""
        if self.hard_pruned:
            return 0.0
        total = 0.0
        for layer in self.handle.pruned:
            d = layer.param - self.Z[layer.name] + self.U[layer.name]
            total = total + d.pow(2).sum()
        return 0.5 * self.rho * total

    def on_step(self) -> None:
        h = self.handle
        period_steps = self.params.admm_epochs * h.steps_per_epoch
        while not self.hard_pruned and h.steps >= (self.periods + 1) * period_steps:
            self.update()
            if self.periods >= self.params.admm_periods:
                self.hard_prune()

    def finalize(self) -> None:
        # A run (or a user's loop) that stops before the last period still ends on the structure.
        if not self.hard_pruned:
            self.hard_prune()

    def lr_clock(self, t: float) -> tuple[float, float] | None:
        """ADMM periods: the schedule restarts every ``admm_epochs``; retraining: once over the
        remaining epochs (None where the run's length is unknown)."""
        p = self.params.admm_epochs
        if t < self.prune_epoch:
            k = math.floor(t / p)
            return t - k * p, float(p)
        if self.handle.epochs is None:
            return None
        return t - self.prune_epoch, max(float(self.handle.epochs - self.prune_epoch), 1e-12)

    # -- the ADMM steps ------------------------------------------------------------------------
    @torch.no_grad()
    def update(self) -> dict[str, Any]:
        """One Z-step and U-step (eqs. 5-6), record the primal residual, then grow rho."""
        weights = self._weights()
        targets = {n: w + self.U[n] for n, w in weights.items()}
        projected = self._project(targets, self._sparsities(targets))
        layers, num, den = {}, 0.0, 0.0
        for layer in self.handle.pruned:
            name, w = layer.name, weights[layer.name]
            z = projected[name]
            self.U[name] = self.U[name] + w - z
            self.Z[name] = z
            layers[name] = relative_residual(w, z)
            num += float((w - z).pow(2).sum())
            den += float(w.pow(2).sum())
        self.periods += 1
        row = {
            "period": self.periods,
            "epoch": self.handle.epoch,
            "rho": self.rho,
            "residual": math.sqrt(num / den) if den > 0 else 0.0,
            "layers": layers,
        }
        self.history.append(row)
        self.rho = self.rho * self.params.rho_growth
        if self.params.rho_max is not None:
            self.rho = min(self.rho, self.params.rho_max)
        return row

    @torch.no_grad()
    def hard_prune(self) -> None:
        """Masks = ``Pi_S(W)``; pruned weights zeroed; the optimizer's state cleared entirely."""
        weights = self._weights()
        masks = self.handle.masks_for(weights, self._sparsities(weights), score=SCORE)
        self.handle.set_masks(masks, clear_optimizer_state=False)
        if self.handle.optimizer is not None:
            self.handle.optimizer.state.clear()
        self.hard_pruned = True
        self.Z, self.U = {}, {}

    def _project(self, tensors, sparsities) -> dict[str, torch.Tensor]:
        """``Pi_S`` of every pruned layer's tensor. A coupled set (``sparsity.couple``) keeps
        the channels of largest summed size-normalised L2 scores (``handle.masks_for``) in all its
        members: one filter mask, as the hard prune will give them. (The exact Euclidean
        projection onto "the members share one filter set" would rank channels by the sum of
        squared, unnormalised L2 norms; the shared rule is used so that the Z-step and the hard
        prune agree with the other methods' choice of a coupled mask.)"""
        masks = self.handle.masks_for(tensors, sparsities, score=SCORE)
        return {name: t * masks[name] for name, t in tensors.items()}

    def _weights(self) -> dict[str, torch.Tensor]:
        return {layer.name: layer.param.detach() for layer in self.handle.pruned}

    def _sparsities(self, tensors: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each layer's target (``scope: layer``), or one global L2 selection over ``tensors``."""
        pruned = self.handle.pruned
        if self.handle.cfg.scope == "layer":
            return {layer.name: layer.target for layer in pruned}
        sizes = {layer.name: layer.param.numel() for layer in pruned}
        overall = sum(layer.target * sizes[layer.name] for layer in pruned) / sum(sizes.values())
        groups = {layer.name: (tensors[layer.name], layer.structure) for layer in pruned}
        return global_sparsities(groups, overall, score=SCORE)

    # -- reporting and state -------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        if not self.history:
            return {}
        return {"admm_residual": self.history[-1]["residual"], "admm_rho": self.rho}

    def summary_extra(self) -> dict[str, Any]:
        return {
            "admm": {
                "rho": self.rho,
                "periods": self.periods,
                "hard_pruned": self.hard_pruned,
                "prune_epoch": self.prune_epoch,
                "history": self.history,
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "rho": self.rho,
            "periods": self.periods,
            "hard_pruned": self.hard_pruned,
            "Z": dict(self.Z),
            "U": dict(self.U),
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rho = float(state.get("rho", self.params.rho))
        self.periods = int(state.get("periods", 0))
        self.hard_pruned = bool(state.get("hard_pruned", False))
        params = {layer.name: layer.param for layer in self.handle.pruned}
        self.Z = {k: v.to(params[k]).clone() for k, v in state.get("Z", {}).items()}
        self.U = {k: v.to(params[k]).clone() for k, v in state.get("U", {}).items()}
        self.history = [dict(row) for row in state.get("history", [])]
