"""Seeded epoch order, rank shards, and batch-wise augmentation for datasets held in memory.

Every random choice here is a pure function of explicit inputs: the run seed, the epoch, the sample
index (augmentation) and the rank layout (sharding). Nothing reads a global RNG, so two runs with
the same seed see the same batches, and a resumed run sees what the original run would have seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of ``parts``, stable across processes and machines."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seeded_generator(*parts: int | str) -> torch.Generator:
    """A CPU generator seeded with ``mix_seed(*parts)``."""
    return torch.Generator().manual_seed(mix_seed(*parts))


def subset_indices(n: int, k: int, seed: int) -> Tensor:
    """The first ``k`` entries of a seeded permutation of ``range(n)``, sorted.

    A prefix of one permutation, so the subset of size k is contained in the subset of size k + 1.
    """
    perm = torch.randperm(n, generator=seeded_generator(seed, "subset"))
    return perm[:k].sort().values


def shard_size(n: int, *, train: bool, rank: int, world_size: int) -> int:
    """How many samples ``epoch_indices`` gives this rank per epoch."""
    if train:
        return n // world_size
    return len(range(rank, n, world_size))


def epoch_indices(
    n: int, *, train: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> Tensor:
    """This rank's sample indices, in order, for one epoch.

    Train: one permutation of ``range(n)`` drawn from (seed, epoch), identical on every rank. Its
    tail is cut to a multiple of ``world_size`` (the ``DistributedSampler(drop_last=True)`` rule:
    no sample is repeated, at most ``world_size - 1`` are skipped, a different few each epoch), and
    rank r takes positions r, r + W, r + 2W, ... Shards are disjoint and equal-sized.

    Test: no shuffling and no padding; rank r takes r, r + W, ... Shards are disjoint, cover the set
    exactly and differ in size by at most one, so per-rank counts summed across ranks give exact
    test metrics (``DistributedSampler``'s padding would count a few samples twice).
    """
    if train:
        order = torch.randperm(n, generator=seeded_generator(seed, "order", epoch))
        usable = n - n % world_size
        return order[rank:usable:world_size]
    return torch.arange(n)[rank::world_size]


@dataclass(frozen=True)
class Normalize:
    """``((v / 255) - mean[c]) / std[c]`` in float32, for uint8 images ``(N, C, H, W)``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        mean = torch.tensor(self.mean, dtype=torch.float32).expand(c).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).expand(c).view(1, c, 1, 1)
        return x.to(torch.float32).div_(255).sub_(mean).div_(std)


@dataclass(frozen=True)
class CropFlip:
    """Random crop to the original size after zero padding by ``pad``, then an optional mirror.

    Equivalent to torchvision's ``RandomCrop(size, padding=pad)`` + ``RandomHorizontalFlip()`` on
    the uint8 image (padding is black, i.e. 0 before normalization), done for a whole batch at once.
    """

    pad: int
    flip: bool

    def draw(self, n: int, seed: int, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """Offsets ``dy``, ``dx`` in ``[0, 2 * pad]`` and mirror flags for every dataset sample.

        Drawn for the whole dataset, not the shard, so a sample's augmentation depends on
        (seed, epoch, index) only, and not on which rank happens to load it.
        """
        g = seeded_generator(seed, "augment", epoch)
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        mirror = torch.randint(0, 2, (n,), generator=g).bool()
        return dy, dx, mirror & self.flip

    def apply(self, x: Tensor, dy: Tensor, dx: Tensor, mirror: Tensor) -> Tensor:
        """Crop/mirror a uint8 batch ``(B, C, H, W)``; ``dy``, ``dx``, ``mirror`` are ``(B,)``."""
        b, _, h, w = x.shape
        p = self.pad
        padded = F.pad(x, (p, p, p, p)) if p else x
        rows = dy[:, None] + torch.arange(h)  # (B, H): source row of each output row
        cols = torch.arange(w).expand(b, w)
        cols = torch.where(mirror[:, None], w - 1 - cols, cols) + dx[:, None]  # (B, W)
        # Advanced indices on dims 0, 2, 3 around a slice put the batch dims first: (B, H, W, C).
        out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()


class ShardedLoader:
    """Epoch bookkeeping shared by both loaders: ``set_epoch``, ``len()``, ``indices()``.

    ``dataset_size`` is the size of the whole split; ``num_samples`` is what this rank reads per
    epoch. The train loader shuffles and drops the last incomplete batch; the test loader does
    neither.
    """

    def __init__(
        self,
        dataset_size: int,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        rank: int,
        world_size: int,
    ):
        self.dataset_size = int(dataset_size)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self.num_samples = shard_size(
            self.dataset_size, train=self.train, rank=self.rank, world_size=self.world_size
        )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.train:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def indices(self) -> Tensor:
        """Dataset indices this rank reads in the current epoch, in order (full batches only)."""
        idx = epoch_indices(
            self.dataset_size,
            train=self.train,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
        )
        return idx[: len(self) * self.batch_size] if self.train else idx


class TensorLoader(ShardedLoader):
    """Batches of a uint8 image tensor held in memory, implementing the Loader protocol.

    ``__iter__`` yields ``(x, y)``: ``x`` float32 ``(B, C, H, W)`` normalized, ``y`` int64 ``(B,)``.
    Order and sharding follow ``epoch_indices``; augmentation follows ``CropFlip.draw``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        train: bool,
        normalize: Normalize,
        augment: CropFlip | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W)\n"
                f"  expected: uint8 with 4 dims\n  got: {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have one entry per image\n"
                f"  expected: ({images.shape[0]},)\n  got: {tuple(labels.shape)}"
            )
        super().__init__(
            images.shape[0],
            batch_size=batch_size,
            train=train,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        self.images = images
        self.labels = labels.to(torch.int64)
        self.normalize = normalize
        self.augment = augment if train else None

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self.indices()
        aug = self.augment
        params = aug.draw(self.dataset_size, self.seed, self.epoch) if aug else None
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            x = self.images[b]
            if aug is not None and params is not None:
                dy, dx, mirror = params
                x = aug.apply(x, dy[b], dx[b], mirror[b])
            yield self.normalize(x), self.labels[b]
