"""PyTorch's own pruning tools as baseline methods: Campfire's schedule, the tool's selection.

``TorchTool`` keeps Campfire's clock (``methods/campfire.py``): dense until ``start``, masks
recomputed every ``frequency`` steps at the cubic target of Zhu & Gupta 2017 (eq. 1; the same
rule as ``torch.ao.pruning.CubicSL``), once more at ``end``, then frozen. At every update the
masks are chosen by the tool's own selection code (``update_masks``, in ``torch_ao`` and
``torch_prune``) and installed through the handle (``handle.set_masks``), so the handle keeps
weights, optimizer state and BatchNorm masks in step as for every method.

What the tool cannot do is refused at ``sparsify_`` time with one line naming the key: a scope,
a score or a structure it has no selection for. Without ``sparsity.score`` in the recipe the
tool's own ranking is filled in (``default_score``), and the summary records it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.errors import ConfigError
from .campfire import Campfire


class TorchTool(Campfire):
    """Campfire's cubic ramp and frozen mask, with masks chosen by a PyTorch pruning tool."""

    name = "torch-tool"
    ranks = ""  # what that code ranks by, in words (for messages)
    default_score = "l1"  # the sparsegrain score that ranks the same way
    scopes: tuple[str, ...] = ("layer",)
    structures: tuple[str, ...] = ("fine",)
    structure_forms = "fine"  # the allowed structures, in words (for messages)
    ranks_by_score = False  # the tool's own ranking, whatever sparsity.score says
    couples = False  # masks from the tool, one layer or one global threshold at a time

    def attach(self) -> None:
        self.check()
        super().attach()

    # -- what the tool can do -------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a scope, score or structure the tool has no selection for (one line each)."""
        cfg = self.handle.cfg
        if cfg.scope not in self.scopes:
            raise ConfigError(
                f"sparsity.scope: method '{self.name}' {self.scope_rule()}; got '{cfg.scope}'; "
                f"allowed: {', '.join(self.scopes)}"
            )
        self._check_score(cfg.score, "")
        for layer in self.handle.pruned:  # per-layer scores and structures (overrides, fallback)
            self._check_score(layer.score, f" (layer '{layer.name}')")
            if layer.structure.name not in self.structures:
                raise ConfigError(
                    f"sparsity.structure: method '{self.name}' takes {self.structure_forms} "
                    f"({self.tool}); layer '{layer.name}' has '{layer.structure.spec}'"
                )

    def _check_score(self, score: str, where: str) -> None:
        if score != self.default_score:
            raise ConfigError(
                f"sparsity.score: method '{self.name}' ranks by {self.ranks} ({self.tool}); "
                f"got '{score}'{where}; allowed: {self.default_score}"
            )

    def scope_rule(self) -> str:
        return "prunes each layer on its own"

    # -- the schedule: Campfire's clock calls this at every mask update ------------------------
    def update_masks(self, targets: dict[str, float]) -> None:
        """Choose masks at these per-layer sparsities with the tool and ``set_masks`` them."""
        raise NotImplementedError

    # -- reporting ------------------------------------------------------------------------------
    def summary_extra(self) -> dict[str, Any]:
        return {"score": self.default_score, "tool": self.tool, "torch": torch.__version__}
