"""torch.distributed glue: the process group from torchrun's environment, reductions of metrics,
rank-0 file writes, and the cross-rank mask consistency check.

Masks, thresholds, quotas and ADMM state are functions of the weights, which DistributedDataParallel
keeps identical on every rank (same initial weights, all-reduced gradients, same optimizer), so
every rank decides the same masks by itself. ``check_masks`` proves it at every mask update by
comparing checksums across ranks, and stops the run loudly if they ever differ.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError, TrainingError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # init_from_env created the process group (shutdown destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()  # one process


def init_from_env() -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): nccl with CUDA, else gloo.
    Without those variables (a plain run) nothing is initialized."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", 0))
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local, owns_group=owns)
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def shutdown(info: DistInfo) -> None:
    """Destroy the process group ``init_from_env`` created. A group left to the interpreter's
    exit is torn down while gloo's threads still run, which can abort a rank ("terminate called
    without an active exception", SIGABRT) after its work is done."""
    if info.owns_group and dist.is_initialized():
        gc.collect()  # first the DistributedDataParallel wrapper, whose reducer uses the group
        dist.destroy_process_group()


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """``data.batch_size`` is the global batch: each rank takes an equal share of it."""
    if global_batch % world_size:
        raise ConfigError(
            f"data.batch_size: the global batch {global_batch} must be divisible by the number "
            f"of processes ({world_size})"
        )
    return global_batch // world_size


def all_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum over ranks (float64); the identity when not distributed."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mask_checksum(masks: dict[str, torch.Tensor]) -> int:
    """An integer that changes with any kept/pruned flip: sum over kept positions of a position
    weight, per layer, mixed with the layer's order."""
    total = 0
    for i, name in enumerate(sorted(masks)):
        flat = masks[name].reshape(-1).to(torch.int64)
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.int64) % 1_000_003 + 1
        total = (total * 1_000_033 + int((flat * weights).sum()) + i) % (1 << 61)
    return total


def gather_ints(value: int, info: DistInfo) -> list[int]:
    if not info.enabled:
        return [value]
    t = torch.tensor([value], dtype=torch.int64)
    out = [torch.zeros_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return [int(x) for x in out]


def check_masks(masks: dict[str, torch.Tensor], info: DistInfo, where: str) -> list[int]:
    """Compare mask checksums across ranks; a difference stops the run naming the step."""
    sums = gather_ints(mask_checksum(masks), info)
    if len(set(sums)) > 1:
        raise TrainingError(f"masks differ across ranks at {where}: checksums {sums}")
    return sums


def weight_checksum(model: torch.nn.Module) -> int:
    """Bit-level checksum of every floating-point parameter and buffer."""
    total = 0
    for name, t in sorted(model.state_dict().items()):
        if t.is_floating_point():
            bits = t.detach().float().contiguous().view(torch.int32).to(torch.int64)
            total = (total * 1_000_033 + int(bits.sum()) + len(name)) % (1 << 61)
    return total
