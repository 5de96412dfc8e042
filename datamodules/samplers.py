"""Batch samplers for metric learning."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
from torch.utils.data import BatchSampler, Sampler


class EpochCounter(Sampler[int]):
    """Holds the epoch for a batch sampler that draws its own indices.

    Lightning calls ``set_epoch`` at each training epoch on ``dataloader.sampler`` and on
    ``dataloader.batch_sampler.sampler``, never on the batch sampler itself; a batch sampler
    keeping the epoch in its own attribute would replay the same batches every epoch. This is
    the ``sampler`` such a batch sampler exposes (``DistributedSampler`` replaces it under DDP).
    """

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


class ClassBalancedBatchSampler(BatchSampler):
    """P classes x K images per batch, so every batch holds positive pairs for metric learning.

    Classes are drawn uniformly (all of them when there are fewer than P); images without
    replacement within a class while it has enough, with replacement for rarer classes. The
    stream is fixed by ``seed`` and the epoch, which Lightning sets on ``self.sampler`` (so a
    resumed run continues the same stream).

    Distributed training goes through Lightning's own sampler injection: under DDP Lightning
    re-creates this batch sampler with ``sampler=DistributedSampler(...)`` (it does so for every
    ``BatchSampler`` subclass that takes a ``sampler`` argument). Only that sampler's rank, number
    of replicas and epoch are used: each rank draws its own ``num_batches / world_size`` batches,
    and the classes stay balanced within every batch.
    """

    def __init__(self, labels: Sequence[int], classes_per_batch: int, images_per_class: int,
                 num_batches: int, seed: int = 0, sampler: Optional[Sampler] = None):
        """
        Args:
            num_batches: batches per epoch over all processes together.
            sampler: ``None``, or the ``DistributedSampler`` Lightning injects under DDP.
        """
        # BatchSampler's own state, for code that inspects it (Lightning, DataLoader).
        self.sampler = sampler if sampler is not None else EpochCounter()
        self.batch_size, self.drop_last = classes_per_batch * images_per_class, True
        self.by_class = {int(c): np.flatnonzero(np.asarray(labels) == c) for c in np.unique(labels)}
        self.p, self.k = classes_per_batch, images_per_class
        self.rank = int(getattr(sampler, "rank", 0))
        self.world_size = int(getattr(sampler, "num_replicas", 1))
        self.num_batches = max(1, num_batches // self.world_size)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.sampler.epoch, self.rank, self.world_size])
        classes = np.array(sorted(self.by_class))
        for _ in range(self.num_batches):
            chosen = rng.choice(classes, size=min(self.p, len(classes)), replace=False)
            batch: list[int] = []
            for c in chosen:
                pool = self.by_class[int(c)]
                batch += rng.choice(pool, size=self.k, replace=len(pool) < self.k).tolist()
            yield batch
