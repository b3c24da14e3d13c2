"""The small protocol every method implements; the handle calls it at a few points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import masking


class Method:
    """Base method: attach all-ones masks, no penalty, nothing on step.

    Hooks: ``attach`` (once, from ``sparsify_``), ``penalty`` (added to the loss),
    ``on_step`` (after each optimizer step; ``handle.epoch`` already advanced), ``finalize``
    (before parametrizations are baked in), ``state_dict``/``load_state_dict`` (resume),
    ``lr_clock`` (phases the LR schedule restarts in), ``metrics`` (extra per-epoch metrics) and
    ``summary_extra`` (extra keys of ``summary.json``).
    """

    name = "base"
    needs_end = False  # the recipe must give sparsity.end
    needs_init = False  # starts from a trained model (--init)
    default_scope = "layer"  # sparsity.scope when the recipe gives none
    freezes_mask = False  # the mask freezes at sparsity.end (train.lr_at_freeze applies there)
    regrows = False  # pruned weights can come back (so sparsity.prune_bn cannot be true)
    couples = True  # honours sparsity.couple (masks from ``handle.prune_to`` or ``couple.masks``)
    ranks_by_score = False  # its masks keep the groups of highest sparsity.score (in summary.json)

    @dataclass
    class Params:
        pass

    def __init__(self, handle, params: dict[str, Any]):
        self.handle = handle
        self.params = self.Params(**params)

    def attach(self) -> None:
        for layer in self.handle.pruned:
            masking.attach(layer)

    def penalty(self) -> torch.Tensor | float:
        return 0.0

    def on_step(self) -> None:
        pass

    def finalize(self) -> None:
        pass

    def lr_clock(self, t: float) -> tuple[float, float] | None:
        """Map the run clock ``t`` (epochs) to ``(t within the phase, phase length)``: the trainer
        evaluates the LR schedule there, so it restarts every phase. None: the run's schedule."""
        return None

    def metrics(self) -> dict[str, float]:
        """Extra numbers for the current epoch's line of ``metrics.jsonl``."""
        return {}

    def summary_extra(self) -> dict[str, Any]:
        """Extra top-level keys (JSON-able) for the run's ``summary.json``."""
        return {"score": self.handle.cfg.score} if self.ranks_by_score else {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
