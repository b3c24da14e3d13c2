"""``method: torch-prune``: ``torch.nn.utils.prune.global_unstructured`` chooses the masks.

At every mask update of Campfire's ramp (``torch_tools``), ``global_unstructured`` with
``L1Unstructured`` prunes, over all pruned layers at once (one threshold on ``|w|``), the number
of weights that brings the total pruned to the cubic target: ``prune``'s masks compose, so the
amount applies to the weights still kept (a ``PruningContainer`` on top of the current masks)
and what was pruned stays pruned. The same masks as ``method: campfire, structure: fine, scope:
global``.

The tool runs on stand-in modules holding contiguous copies of the current weights and masks,
never on the model: ``prune`` installs its own forward pre-hooks, and it flattens weights and
masks with ``.view(-1)`` (``L1Unstructured.compute_mask``, ``parameters_to_vector``), which a
channels_last conv weight refuses. Its masks are installed with ``handle.set_masks``.

``structure: fine`` and ``scope: global`` only (the default); ``score``: ``l1`` (``|w|``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .torch_tools import TorchTool


def global_l1_masks(
    weights: dict[str, Tensor], masks: dict[str, Tensor], amount: int
) -> dict[str, Tensor]:
    """``prune.global_unstructured(L1Unstructured, amount)`` on top of ``masks``: ``amount``
    more of the weights still kept, the smallest ``|w|`` over all tensors; bool masks."""
    from torch.nn.utils import prune

    holders = {}
    for name, w in weights.items():
        holder = nn.Module()
        holder.weight = nn.Parameter(w.detach().contiguous().clone(), requires_grad=False)
        prune.custom_from_mask(holder, "weight", masks[name].contiguous())
        holders[name] = holder
    prune.global_unstructured(
        [(h, "weight") for h in holders.values()],
        pruning_method=prune.L1Unstructured,
        amount=amount,
        importance_scores={(h, "weight"): h.weight_orig.detach() for h in holders.values()},
    )
    return {name: h.weight_mask.reshape(weights[name].shape) != 0 for name, h in holders.items()}


class TorchPrune(TorchTool):
    """Campfire's ramp with masks from torch.nn.utils.prune's global L1 pruning."""

    name = "torch-prune"
    tool = "torch.nn.utils.prune.global_unstructured(L1Unstructured)"
    ranks = "|w|, L1"
    default_score = "l1"
    default_scope = "global"
    scopes = ("global",)
    structures = ("fine",)
    structure_forms = "fine, unstructured"

    def scope_rule(self) -> str:
        return "prunes with one threshold over all layers"

    @torch.no_grad()
    def update_masks(self, targets: dict[str, float]) -> None:
        pruned = self.handle.pruned
        sizes = {layer.name: layer.param.numel() for layer in pruned}
        total = sum(sizes.values())
        overall = sum(targets[name] * n for name, n in sizes.items()) / max(1, total)
        masks = {layer.name: layer.parametrization.mask != 0 for layer in pruned}
        more = round(overall * total) - sum(int((~m).sum()) for m in masks.values())
        if more <= 0:  # the masks already hold the target: prune has nothing to add
            return
        weights = {layer.name: layer.weight for layer in pruned}
        self.handle.set_masks(global_l1_masks(weights, masks, more))

    @classmethod
    def table_label(cls, structure: str) -> str:
        return "torch.nn.utils.prune global L1"
