"""The method <-> handle protocol: what a method may read and call, and the hooks it implements.

A method is a small object the handle (``sparsegrain.sparsity.handle.Sparsifier``) creates once
per model and calls at a few points. It never touches masks, parametrizations or the model's
graph itself: everything goes through the handle's calls below, so the handle keeps the masks,
the BatchNorm masks, coupled sets, optimizer state and the cross-rank checks in step. This
package imports nothing above ``structures`` (ARCHITECTURE.md).

What a method may **read** on the handle (``self.handle``):

- ``cfg``: the validated ``sparsity`` section (``start``, ``end``, ``frequency``, ``scope``,
  ``score``, ``target``, ``initial``, ...; ``scope`` is never None);
- ``pruned``: the layers that get a structure (``LayerView`` below), in model order;
- ``steps`` (optimizer steps so far), ``steps_per_epoch``, ``epoch`` (= steps / steps_per_epoch),
  ``epochs`` (the run's length in epochs, or None in a user's loop that did not give it);
- ``optimizer`` (or None): a method may clear its whole state (ADMM's hard prune).

What a method may **call** on the handle:

- ``attach(layer, parametrization=None)``: put a parametrization on the layer's weight (default:
  an all-ones ``Mask`` whose ``mask`` buffer the handle sets); returns it;
- ``prune_to(targets)``: recompute every pruned layer's mask from its current weights at these
  per-layer sparsities, through the scope (``sparsities_at``), coupled sets and
  ``layer.structure``, and zero what is dropped (weights and optimizer state);
- ``sparsities_at(targets)``: the per-layer sparsities ``prune_to`` would use;
- ``masks_for(tensors, sparsities, score=None)``: the masks ``prune_to`` would install for these
  tensors (coupled sets share one filter mask), without installing them;
- ``set_masks(masks, clear_optimizer_state=True)``: install masks a method computed itself (an
  external selector, ADMM's projection), with the same zeroing.

What a method may read on a layer (``LayerView``): ``name``, ``structure``, ``target``,
``initial``, ``score``, ``weight`` (effective: mask applied), ``param`` (the Parameter the
optimizer holds), ``shape``, ``parametrization`` (what ``attach`` put there); it may write
``extra`` (a dict for its own per-layer notes, e.g. Feather's ``theta``).

Hooks (all optional): ``attach`` (once, from ``sparsify_``), ``penalty`` (added to the loss),
``on_step`` (after each optimizer step; ``handle.epoch`` already advanced), ``finalize`` (before
parametrizations are baked in), ``state_dict``/``load_state_dict`` (resume), ``lr_clock``
(phases the LR schedule restarts in), ``metrics`` (extra per-epoch metrics) and
``summary_extra`` (extra keys of ``summary.json``). Class attributes describe the method to the
recipe validation (``default_scope``, ``default_score``, ``structures``, ``scopes``, ``needs_end``,
``regrows``, ``couples``),
the handle (``prunes``, ``uses_clock``), the trainer (``needs_init``, ``freezes_mask``) and the
reports (``ranks_by_score``, ``tool``, ``table_label``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..structures import Structure


class LayerView(Protocol):
    """A pruned layer as a method sees it."""

    name: str
    structure: Structure
    target: float
    initial: float
    score: str
    extra: dict

    @property
    def weight(self) -> Tensor: ...

    @property
    def param(self) -> nn.Parameter: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def parametrization(self) -> nn.Module | None: ...


class HandleView(Protocol):
    """The handle as a method sees it (module doc)."""

    cfg: Any
    steps: int
    steps_per_epoch: int
    epochs: float | None
    optimizer: torch.optim.Optimizer | None

    @property
    def epoch(self) -> float: ...

    @property
    def pruned(self) -> Sequence[LayerView]: ...

    def attach(self, layer: LayerView, parametrization: nn.Module | None = None) -> nn.Module: ...

    def prune_to(self, targets: Mapping[str, float]) -> None: ...

    def sparsities_at(self, targets: Mapping[str, float]) -> dict[str, float]: ...

    def masks_for(
        self, tensors: Mapping[str, Tensor], sparsities: Mapping[str, float], score=None
    ) -> dict[str, Tensor]: ...

    def set_masks(
        self, masks: Mapping[str, Tensor], clear_optimizer_state: bool = True
    ) -> None: ...


class Method:
    """Base method: attach all-ones masks, no penalty, nothing on step."""

    name = "base"
    prunes = True  # False: every layer is left dense (decided in layer selection)
    uses_clock = True  # reads handle.epoch: sparsify_ then needs steps_per_epoch
    needs_end = False  # the recipe must give sparsity.end
    needs_init = False  # starts from a trained model (--init)
    default_scope = "layer"  # sparsity.scope when the recipe gives none
    default_score = "l1"  # sparsity.score when the recipe gives none
    freezes_mask = False  # the mask freezes at sparsity.end (train.lr_at_freeze applies there)
    regrows = False  # pruned weights can come back (so sparsity.prune_bn cannot be true)
    couples = True  # honours sparsity.couple (masks from ``prune_to`` or ``masks_for``)
    ranks_by_score = False  # its masks keep the groups of highest sparsity.score (in summary.json)
    tool = ""  # the outside code that chooses its masks (PyTorch's pruning tools), in summary.json
    structures: tuple[str, ...] | None = None  # the structure names it can prune with; None: all
    scopes: tuple[str, ...] = ("layer", "global")  # the sparsity.scope values it takes

    @dataclass
    class Params:
        pass

    def __init__(self, handle: HandleView, params: dict[str, Any]):
        self.handle = handle
        self.params = self.Params(**params)

    def attach(self) -> None:
        for layer in self.handle.pruned:
            self.handle.attach(layer)

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

    @classmethod
    def table_label(cls, structure: str) -> str:
        """The method's name in comparison tables and plots, for runs of this structure."""
        return cls.name

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
