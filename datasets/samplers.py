"""Distributed samplers: a resumable shuffled one for training, an exactly-once one for evaluation.

``ResumableShardSampler`` yields ``(epoch, index)`` keys so each sample's augmentation can be
seeded from (seed, epoch, index) alone.  Its order is a pure function of (seed, epoch): rank r
takes positions r, r + W, r + 2W, ... of one global permutation, so W ranks with batch b see
exactly the samples that one process with batch W*b would see, step for step.  ``start`` skips
the first ``start`` keys of this rank's share: that is how a run resumed mid-epoch continues
with the next unseen batch instead of repeating or skipping any.

``ExactShardSampler`` gives every index to exactly one rank, without the padding duplicates of
``torch.utils.data.DistributedSampler`` (ranks may differ by one sample), so metrics computed
from the gathered predictions are the same for any world size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


def parse_key(key: Any) -> tuple[int, int]:
    """A dataset key -> (epoch, index): ``(epoch, index)`` from ResumableShardSampler, or a plain
    index (epoch 0) from any other sampler."""
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise TypeError(f"dataset key must be an int or (epoch, index), got {key!r}")
        return int(key[0]), int(key[1])
    return 0, int(key)


class ResumableShardSampler(Sampler):
    def __init__(
        self, num_samples: int, rank: int, world_size: int, seed: int, multiple_of: int = 1, shuffle: bool = True
    ):
        if num_samples <= 0:
            raise ValueError("the training set is empty")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        # Every rank gets the same number of keys, a multiple of batch * accumulation, so every
        # rank takes the same number of optimizer steps per epoch (the remainder is dropped).
        per_rank = num_samples // world_size
        self.per_rank = per_rank // multiple_of * multiple_of
        if self.per_rank == 0:
            raise ValueError(
                f"{num_samples} training samples cannot fill one step of {multiple_of} clips "
                f"on each of {world_size} ranks; lower --batch-size/--accum-steps"
            )
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start {start} outside this rank's epoch of {self.per_rank} samples")
        self.epoch = epoch
        self.start = start

    def order(self, epoch: int) -> torch.Tensor:
        """The global order of sample indices for ``epoch``."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.order(self.epoch)[self.rank :: self.world_size][: self.per_rank]
        for index in mine[self.start :].tolist():
            yield (self.epoch, index)

    def __len__(self) -> int:
        return self.per_rank - self.start


class ExactShardSampler(Sampler):
    def __init__(self, num_samples: int, rank: int, world_size: int):
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
