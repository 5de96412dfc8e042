"""Batch samplers for metric learning."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """P classes x K images per batch, so every batch holds positive pairs for metric learning.

    Classes are drawn uniformly (all of them when there are fewer than P); images without
    replacement within a class while it has enough, with replacement for rarer classes. The
    stream is fixed by ``seed`` and the epoch (``set_epoch``); under DDP each rank draws its own
    batches (``rank``/``world_size``)."""

    def __init__(self, labels: Sequence[int], classes_per_batch: int, images_per_class: int,
                 num_batches: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.by_class = {int(c): np.flatnonzero(np.asarray(labels) == c) for c in np.unique(labels)}
        self.p, self.k = classes_per_batch, images_per_class
        self.num_batches, self.seed, self.rank, self.world_size = num_batches, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.world_size])
        classes = np.array(sorted(self.by_class))
        for _ in range(self.num_batches):
            chosen = rng.choice(classes, size=min(self.p, len(classes)), replace=False)
            batch: list[int] = []
            for c in chosen:
                pool = self.by_class[int(c)]
                batch += rng.choice(pool, size=self.k, replace=len(pool) < self.k).tolist()
            yield batch
