"""Accuracy of a model over a loader: loss, top-1 and top-5, summed over ranks' shards."""

from __future__ import annotations

import torch
from torch import nn

from ..core.dist import SINGLE, DistInfo, all_sum
from ..core.outputs import logits_of


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, channels_last: bool = False, info: DistInfo = SINGLE
) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (percent) over a loader (summed over ranks' shards).

    The model's output goes through ``logits_of`` (a Hugging Face ``ModelOutput`` gives its
    ``logits``); ``channels_last`` applies to image batches only."""
    was_training = model.training
    model.eval()
    loss_sum, n, c1, c5 = 0.0, 0, 0, 0
    for x, y in loader:
        if channels_last and x.dim() == 4:  # images; token ids (B, L) stay as they are
            x = x.contiguous(memory_format=torch.channels_last)
        out = logits_of(model(x))
        loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").item()
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        hit = top == y[:, None]
        c1 += int(hit[:, 0].sum())
        c5 += int(hit.any(dim=1).sum())
        n += len(y)
    model.train(was_training)
    loss_sum, n, c1, c5 = all_sum([loss_sum, n, c1, c5], info)
    return {
        "loss": loss_sum / max(n, 1),
        "top1": 100.0 * c1 / max(n, 1),
        "top5": 100.0 * c5 / max(n, 1),
    }
