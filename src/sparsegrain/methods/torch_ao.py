"""``method: torch-ao``: ``torch.ao.pruning.WeightNormSparsifier`` chooses the masks.

``WeightNormSparsifier.update_mask`` zeroes whole ``sparse_block_shape`` blocks of a weight, the
lowest mean square (L2) first, until ``sparsity_level`` of the blocks are zero; with
``zeros_per_block`` below the block size it zeroes only that many elements (the smallest
squares) of each chosen block. It masks the last two dims of a weight (it is written for
``nn.Linear``: on a conv weight ``(K, C, R, S)`` its ``F.avg_pool2d`` gets a 6-D input and
raises), so it is handed the ``(K, C*R*S)`` GEMM view, the view sparsegrain's ``block`` and
``nm`` structures tile, and its mask is reshaped back. The selection is torch.ao's
own code; the level at each update is Campfire's cubic target (``torch_tools``).

Structures, per layer (``sparsity.structure``, ``fallback`` or ``overrides``):

- ``block:B1xB2``: ``sparse_block_shape=(B1, B2)``, whole blocks; the same masks as
  ``method: campfire, score: l2`` (blocks of one size: mean square and L2 rank alike);
- ``fine``: ``sparse_block_shape=(1, 1)``;
- ``nm:N:M``: ``sparse_block_shape=(1, M)``, ``zeros_per_block=M-N``, the level (the share of
  blocks at N:M) ramped to 1 as the cubic target over ``1 - N/M``, so every block of M ends
  N:M; the layer's target must be ``1 - N/M``.

``scope: layer`` only (the sparsifier prunes each tensor on its own; ``method: torch-prune`` is
one global threshold); ``score``: L2 only (``l2``, the sparsifier's default norm).
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError
from ..structures import Structure
from .torch_tools import TorchTool


def block_setting(structure: Structure) -> tuple[tuple[int, int], int]:
    """``(sparse_block_shape, zeros_per_block)`` of WeightNormSparsifier for a structure."""
    if structure.name == "block":
        return (structure.b1, structure.b2), structure.b1 * structure.b2
    if structure.name == "nm":
        return (1, structure.m), structure.m - structure.n
    return (1, 1), 1  # fine


def gemm_mask(
    sparsifier: Any, w: Tensor, level: float, block: tuple[int, int], zeros_per_block: int
) -> Tensor:
    """``WeightNormSparsifier.update_mask``'s mask for ``w`` on its ``(K, C*R*S)`` view, in
    ``w``'s shape (torch.ao's dtype: 1 kept, 0 dropped)."""
    from torch.ao.pruning import WeightNormSparsifier

    gemm = w.detach().reshape(w.shape[0], -1)
    # update_mask reads the tensor and its parametrization's mask from the module it is given:
    # a stand-in with the view, so the selection runs on (K, C*R*S) and the model is untouched.
    holder = SimpleNamespace(mask=torch.ones(gemm.shape, device=w.device))
    view = SimpleNamespace(weight=gemm, parametrizations=SimpleNamespace(weight=[holder]))
    WeightNormSparsifier.update_mask(
        sparsifier, view, "weight", level, tuple(block), zeros_per_block=zeros_per_block
    )
    return holder.mask.reshape(w.shape)


@cache
def _gemm_sparsifier_class() -> type:
    from torch.ao.pruning import WeightNormSparsifier

    class GemmWeightNormSparsifier(WeightNormSparsifier):
        """``WeightNormSparsifier`` (``prepare``/``step``, its own parametrizations) that masks
        conv weights on their ``(K, C*R*S)`` view (``gemm_mask``)."""

        def update_mask(self, module, tensor_name, sparsity_level, sparse_block_shape, **kwargs):
            fake = getattr(module.parametrizations, tensor_name)[0]
            w = getattr(module, tensor_name)
            zeros = kwargs["zeros_per_block"]
            mask = gemm_mask(self, w, sparsity_level, sparse_block_shape, zeros)
            # Keep the weight's memory format (channels_last): the adapter must not slow the conv.
            fake.mask.data = torch.empty_like(w, dtype=mask.dtype).copy_(mask)

    return GemmWeightNormSparsifier


def gemm_weight_norm_sparsifier(**kwargs: Any) -> Any:
    """A ``WeightNormSparsifier(**kwargs)`` whose masks of conv weights tile the GEMM view."""
    return _gemm_sparsifier_class()(**kwargs)


class TorchAo(TorchTool):
    """Campfire's ramp with masks from torch.ao.pruning's WeightNormSparsifier (per layer)."""

    name = "torch-ao"
    tool = "torch.ao.pruning.WeightNormSparsifier"
    ranks = "the mean square of each block, L2"
    default_score = "l2"
    scopes = ("layer",)
    structures = ("block", "nm", "fine")
    structure_forms = "block:B1xB2, nm:N:M or fine, on the (K, C*R*S) view"

    def check(self) -> None:
        super().check()
        for layer in self.handle.pruned:
            fixed = layer.structure.fixed_sparsity
            if fixed is not None and abs(layer.target - fixed) > 1e-9:
                raise ConfigError(
                    f"sparsity.target: method 'torch-ao' ramps {layer.structure.spec} to every "
                    f"block at N:M, sparsity {fixed:g}; layer '{layer.name}' has target "
                    f"{layer.target:g}; allowed: {fixed:g}"
                )

    def scope_rule(self) -> str:
        return "prunes each layer on its own (for one global threshold: method 'torch-prune')"

    def attach(self) -> None:
        from torch.ao.pruning import WeightNormSparsifier

        super().attach()
        self.sparsifier = WeightNormSparsifier(norm=2)  # update_mask reads only its norm
        self.blocks = {layer.name: block_setting(layer.structure) for layer in self.handle.pruned}

    @torch.no_grad()
    def update_masks(self, targets: dict[str, float]) -> None:
        masks = {}
        for layer in self.handle.pruned:
            block, zeros = self.blocks[layer.name]
            level, fixed = targets[layer.name], layer.structure.fixed_sparsity
            if fixed is not None:  # N:M: the level is the share of blocks at N:M
                level = min(1.0, level / fixed) if fixed > 0 else 0.0
            mask = gemm_mask(self.sparsifier, layer.weight, level, block, zeros)
            masks[layer.name] = mask != 0
        self.handle.set_masks(masks)

    @classmethod
    def table_label(cls, structure: str) -> str:
        """``torch.ao WeightNorm block1x4``, ``torch.ao WeightNorm 2:4``, ``... fine``."""
        return "torch.ao WeightNorm " + structure.replace("block:", "block").removeprefix("nm:")
