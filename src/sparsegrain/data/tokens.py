"""A synthetic token-sequence classification set, for text models in tests and smoke runs.

Token ids run over ``1 .. vocab_size - 1`` (0 is left out: it is the padding id of most text
models, whose embedding row stays zero). The ids are cut into ``num_classes`` equal blocks, the
block of class ``c`` being ``1 + c * b .. c * b + b`` with ``b = (vocab_size - 1) // num_classes``.
Every position of a sample of class ``c`` holds, with probability 1/2, an id drawn uniformly from
the block of ``c``, and otherwise an id drawn uniformly from the whole range. So a class shows as
an excess of its own ids (about ``seq_len / 2`` of them beside the ``seq_len / (2 k)`` that
noise puts in each block): a bag of words separates the classes, and a two-layer BERT of width
32 trained with SGD learns it well above chance within a hundred or so steps. Sequences all
have ``seq_len`` tokens (no padding).

The data depend only on the arguments and ``seed`` (``data.synthetic_seed``), never on the run
seed: every run trains on the same sequences.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .loader import ShardedLoader, seeded_generator

MARKED = 0.5  # the share of a sequence's positions drawn from its class's block


def make_split(
    num_classes: int, vocab_size: int, seq_len: int, n: int, split: str, seed: int
) -> tuple[Tensor, Tensor]:
    """``n`` samples: int64 token ids ``(n, seq_len)`` and balanced int64 labels ``(n,)``."""
    g = seeded_generator("synthetic-tokens", split, num_classes, vocab_size, seq_len, seed)
    block = (vocab_size - 1) // num_classes
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    noise = torch.randint(1, vocab_size, (n, seq_len), generator=g)
    own = 1 + labels[:, None] * block + torch.randint(0, block, (n, seq_len), generator=g)
    marked = torch.rand(n, seq_len, generator=g) < MARKED
    return torch.where(marked, own, noise), labels


def make_tokens(
    num_classes: int, vocab_size: int, seq_len: int, n_train: int, n_test: int, seed: int
) -> dict[str, tuple[Tensor, Tensor]]:
    """Train and test splits drawn by the same rule with independent draws."""
    return {
        split: make_split(num_classes, vocab_size, seq_len, n, split, seed)
        for split, n in (("train", n_train), ("test", n_test))
    }


class TokenLoader(ShardedLoader):
    """Batches of token sequences held in memory, implementing the Loader protocol for text:
    ``for x, y in loader`` gives ``x`` int64 ``(B, L)`` token ids and ``y`` int64 ``(B,)``.
    Order and sharding follow ``epoch_indices``; there is no augmentation and no normalization.
    """

    def __init__(
        self,
        tokens: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if tokens.dtype != torch.int64 or tokens.dim() != 2:
            raise ValueError(
                f"tokens must be int64 (N, L)\n"
                f"  expected: int64 with 2 dims\n  got: {tokens.dtype} {tuple(tokens.shape)}"
            )
        if labels.shape != (tokens.shape[0],):
            raise ValueError(
                f"labels must have one entry per sequence\n"
                f"  expected: ({tokens.shape[0]},)\n  got: {tuple(labels.shape)}"
            )
        super().__init__(
            tokens.shape[0],
            batch_size=batch_size,
            train=train,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        self.tokens = tokens
        self.labels = labels.to(torch.int64)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self.indices()
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            yield self.tokens[b], self.labels[b]
