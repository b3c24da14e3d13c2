"""torch.distributed glue: the process group from torchrun's environment, reductions of metrics,
rank-0 file writes, and the cross-rank mask consistency check.

Masks, thresholds, quotas and ADMM state are functions of the weights, which DistributedDataParallel
keeps identical on every rank (same initial weights, all-reduced gradients, same optimizer), so
every rank decides the same masks by itself. ``check_masks`` proves it at every mask update by
comparing checksums across ranks, and stops the run loudly if they ever differ.

A rank that hangs makes the others' next collective time out after ``train.dist_timeout``
seconds. ``collective_failure`` then finds which ranks stopped answering: every rank that gave up
checks in on the rendezvous store, and the ranks that never check in are the ones named.
torchrun's agent holds that store, so it answers whichever rank hangs; where rank 0 holds it
(a launcher other than torchrun), a hung rank 0 leaves the others unable to name it.
"""

from __future__ import annotations

import gc
import os
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError, TrainingError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # init_from_env created the process group (shutdown destroys it)
    timeout: float = 1800.0  # seconds a collective waits for the other ranks (gloo default)
    # where ranks check in after a failed collective (None: a group init_from_env did not make)
    store: Any = field(default=None, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()  # one process


def init_from_env(timeout: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): nccl with CUDA, else gloo,
    whose collectives give up after ``timeout`` seconds. Without those variables (a plain run)
    nothing is initialized; a group that already exists is used as it is."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), local)
    else:
        # The env:// rendezvous init_process_group would make, done here to keep its store.
        wait = timedelta(seconds=timeout)
        store, rank, world = next(dist.rendezvous("env://", timeout=wait))
        store.set_timeout(wait)
        dist.init_process_group(
            backend="nccl" if torch.cuda.is_available() else "gloo",
            store=dist.PrefixStore("default_pg", store),
            rank=rank,
            world_size=world,
            timeout=wait,
        )
        side = dist.PrefixStore("sparsegrain", store)
        info = DistInfo(rank, world, local, owns_group=True, timeout=timeout, store=side)
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


# Words of the errors gloo and nccl raise when a peer times out, hangs up or dies.
_COLLECTIVE_WORDS = ("gloo", "NCCL", "pair closure", "Connection closed", "Connection reset")
CHECK_IN_S = 30.0  # at most this long a rank that gave up waits for the others to check in


def collective_failure(error: BaseException, info: DistInfo) -> TrainingError | None:
    """``error`` as one line naming the ranks that stopped answering, where it is a collective
    that timed out or lost a peer; None for anything else."""
    if not info.enabled or isinstance(error, TrainingError):
        return None
    text = str(error)
    if not isinstance(error, dist.DistError) and not any(w in text for w in _COLLECTIVE_WORDS):
        return None
    # gloo: "[.../unbound_buffer.cc:78] Timed out waiting 2000ms for recv operation to complete"
    reason = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().split("\n")[0]).split(". ")[0]
    lost = unanswered_ranks(info)
    if not lost:
        return TrainingError(f"a collective failed on rank {info.rank}: {reason}")
    who = f"rank {lost[0]}" if len(lost) == 1 else f"ranks {', '.join(map(str, lost))}"
    return TrainingError(
        f"{who} stopped answering ({reason}; train.dist_timeout is {info.timeout:g} s)"
    )


def unanswered_ranks(info: DistInfo, poll_s: float = 0.05) -> list[int] | None:
    """Check this rank in on the store, then wait up to ``min(timeout, CHECK_IN_S)`` for the
    others; the ranks that did not check in. Every rank that gave up on a collective arrives
    here within about one step of the others. None where the store cannot be asked."""
    if info.store is None:
        return None
    keys = [f"gave_up/{r}" for r in range(info.world_size)]
    deadline = time.monotonic() + min(info.timeout, CHECK_IN_S)
    try:
        info.store.set(keys[info.rank], "1")
        while True:  # polled: store.wait's timeout prints socket warnings of its own
            lost = [r for r, key in enumerate(keys) if not info.store.check([key])]
            if not lost or time.monotonic() >= deadline:
                return lost
            time.sleep(poll_s)
    except RuntimeError:  # the store is gone too (DistStoreError is a RuntimeError)
        return None


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
