"""Campfire (Gamboa et al., arXiv 2001.03253): gradual magnitude pruning to a frozen mask.

Dense until ``start``; from ``start`` to ``end`` the masks are recomputed every ``frequency``
steps at the cubic target of Zhu & Gupta 2017 (eq. 1, ``schedules.cubic_sparsity``), from each
layer's current (masked) weights, so a pruned group scores zero and stays pruned; at ``end`` the
masks are set once more at the final target and **frozen**: training goes on with them, and no
regularizer is added. Works with every structure; Campfire's own are ``window``,
``kernel-quota`` and ``combined``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.schedules import cubic_sparsity
from .base import Method


class Campfire(Method):
    """Gradual magnitude pruning (cubic ramp) that freezes the mask at `end` (Campfire)."""

    name = "campfire"
    needs_end = True
    freezes_mask = True
    ranks_by_score = True

    @dataclass
    class Params:
        pass

    def __init__(self, handle, params: dict[str, Any]):
        super().__init__(handle, params)
        self.frozen = False
        self.updates = 0

    def targets_at(self, t: float) -> dict[str, float]:
        cfg = self.handle.cfg
        end = cfg.start if cfg.end is None else cfg.end
        return {
            layer.name: cubic_sparsity(
                t, initial=layer.initial, final=layer.target, start=cfg.start, end=end
            )
            for layer in self.handle.pruned
        }

    def on_step(self) -> None:
        h = self.handle
        if self.frozen or h.epoch < h.cfg.start:
            return
        at_end = h.epoch >= (h.cfg.start if h.cfg.end is None else h.cfg.end)
        if at_end or self.updates == 0 or h.steps % h.cfg.frequency == 0:
            self.update_masks(self.targets_at(h.epoch))
            self.updates += 1
            self.frozen = at_end

    def update_masks(self, targets: dict[str, float]) -> None:
        """New masks at these per-layer sparsities: the structures' top groups by score. A
        subclass may choose them another way (``torch_tools``) and ``set_masks`` them."""
        self.handle.prune_to(targets)

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": self.frozen, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = bool(state.get("frozen", False))
        self.updates = int(state.get("updates", 0))


class OneShot(Method):
    """Magnitude pruning once at `start` (0: a trained model, --init), then a fixed-mask fine-tune.

    The baseline of every gradual method."""

    name = "oneshot"
    needs_init = True
    ranks_by_score = True

    def __init__(self, handle, params: dict[str, Any]):
        super().__init__(handle, params)
        self.done = False

    def attach(self) -> None:
        super().attach()
        if self.handle.cfg.start <= 0:
            self._prune()

    def _prune(self) -> None:
        self.handle.prune_to({layer.name: layer.target for layer in self.handle.pruned})
        self.done = True

    def on_step(self) -> None:
        if not self.done and self.handle.epoch >= self.handle.cfg.start:
            self._prune()

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = bool(state.get("done", False))


class Dense(Method):
    """No pruning: the dense baseline trained on the same loop."""

    name = "dense"
    prunes = False
    uses_clock = False
