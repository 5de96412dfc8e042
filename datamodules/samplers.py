"""Training samplers whose every draw is a function of (run seed, epoch, position, rank), and
``TrainingSampling``, the policy that picks one from the datamodule's options.

They yield ``SampleKey``s: the index of a sample and the seed of its augmentation, which the
dataset applies in whichever worker loads it. A run resumed at (epoch, batch) skips exactly the
samples trained before and continues the same streams (see ``datamodules/seeding.py``).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from torch.utils.data import BatchSampler, DistributedSampler, Sampler

from datamodules.records import DatasetError
from datamodules.seeding import SampleKey, TrainPosition

# Stream names mixed into the seeds, so the order, the augmentations and the negatives drawn
# never share draws.
ORDER, AUGMENT, NEGATIVES = 0, 1, 2


class SeededSampler(DistributedSampler):
    """Each epoch: a permutation of the dataset (``weights=None``) or ``len(weights)`` draws with
    replacement in proportion to ``weights`` (class-balanced or oversampled training), split
    over the DDP ranks like ``DistributedSampler`` (padded by wrapping to a multiple of them).

    The epoch's global order and each position's augmentation seed come from (``seed``, epoch)
    alone; rank r takes positions r, r + R, ... So the union over ranks is the same for any
    number of processes, and nothing depends on earlier epochs.

    It *is* a ``DistributedSampler`` (built with the rank and world size the datamodule reads
    from the trainer), so Lightning leaves it in place under DDP instead of wrapping it, and
    calls ``set_epoch`` on it every epoch.
    """

    def __init__(self, num_samples: int, seed: int, weights: Optional[Sequence[float]] = None,
                 num_replicas: int = 1, rank: int = 0, resume_at: tuple[int, int] = (0, 0)):
        """
        Args:
            num_samples: dataset size (draws per epoch, with ``weights``).
            resume_at: (epoch, samples of this rank already trained in it): a resumed run starts
                there; any other epoch is drawn whole.
        """
        if num_samples < 1:
            raise ValueError("SeededSampler needs at least one sample")
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.n = num_samples
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights is not None and (len(self.weights) != num_samples or not (self.weights >= 0).all()
                                         or self.weights.sum() <= 0):
            raise ValueError("weights must be one non-negative number per sample, not all zero")
        self.resume_at = (int(resume_at[0]), int(resume_at[1]))
        self.epoch = self.resume_at[0]

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, augmentation seeds) of the whole epoch, all ranks, padded to ``total_size``."""
        rng = np.random.default_rng([self.seed, epoch, ORDER])
        if self.weights is None:
            order = rng.permutation(self.n)
        else:
            order = rng.choice(self.n, size=self.n, replace=True, p=self.weights / self.weights.sum())
        order = np.resize(order, self.total_size)  # pads by repeating from the start
        seeds = np.random.default_rng([self.seed, epoch, AUGMENT]).integers(0, 2**32, size=self.total_size)
        return order, seeds

    def __iter__(self) -> Iterator[SampleKey]:
        order, seeds = self.epoch_order(self.epoch)
        mine = np.arange(self.rank, self.total_size, self.num_replicas)
        if self.epoch == self.resume_at[0]:
            mine = mine[self.resume_at[1]:]
        # Made as they are taken: a 400,000-image epoch starts at once.
        return map(SampleKey, order[mine].tolist(), seeds[mine].tolist())

    def __len__(self) -> int:
        return self.num_samples


class NegativeSubsampler(SeededSampler):
    """Extreme imbalance (ISIC 2024: 0.1 % malignant): every epoch trains on every image of the
    minority classes and a fresh draw of ``negatives`` images of the majority class.

    The majority class ("negatives") is the class with the most training images (ties: the
    lower class index); for binary data that is the benign class, and every positive is kept.
    Which negatives an epoch gets is drawn without replacement from (``seed``, epoch) alone, so
    epochs differ, and a resumed run draws the same ones; the kept images are then shuffled,
    padded and split over the ranks exactly like ``SeededSampler``'s permutation.
    """

    def __init__(self, labels: Sequence[int], negatives: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 resume_at: tuple[int, int] = (0, 0)):
        labels = np.asarray(labels)
        if negatives < 1:
            raise ValueError(f"negatives_per_epoch must be at least 1, got {negatives}")
        counts = np.bincount(labels) if len(labels) else np.zeros(1, int)
        self.negative_class = int(np.argmax(counts))
        self.positives = np.flatnonzero(labels != self.negative_class)
        self.negatives = np.flatnonzero(labels == self.negative_class)
        self.negatives_per_epoch = min(int(negatives), len(self.negatives))
        super().__init__(len(self.positives) + self.negatives_per_epoch, seed, None, num_replicas=num_replicas,
                         rank=rank, resume_at=resume_at)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The dataset indices trained in ``epoch`` (every positive, the epoch's negatives), sorted."""
        rng = np.random.default_rng([self.seed, epoch, NEGATIVES])
        drawn = rng.choice(len(self.negatives), size=self.negatives_per_epoch, replace=False)
        return np.sort(np.concatenate([self.positives, self.negatives[drawn]]))

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order, seeds = super().epoch_order(epoch)  # a permutation of the epoch's images, padded
        return self.epoch_indices(epoch)[order], seeds


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
    stream is fixed by ``seed``, the epoch (which Lightning sets on ``self.sampler``) and the
    rank, and each image gets its augmentation seed from the same values; ``resume_at`` skips the
    batches a resumed epoch has already trained (the draws are made all the same, so the rest
    of the epoch is unchanged).

    Distributed training goes through Lightning's own sampler injection: under DDP Lightning
    re-creates this batch sampler with ``sampler=DistributedSampler(...)`` (it does so for every
    ``BatchSampler`` subclass that takes a ``sampler`` argument). Only that sampler's rank, number
    of replicas and epoch are used: each rank draws its own ``num_batches / world_size`` batches,
    and the classes stay balanced within every batch.
    """

    def __init__(self, labels: Sequence[int], classes_per_batch: int, images_per_class: int,
                 num_batches: int, seed: int = 0, sampler: Optional[Sampler] = None,
                 resume_at: tuple[int, int] = (0, 0)):
        """
        Args:
            num_batches: batches per epoch over all processes together.
            sampler: ``None``, or the ``DistributedSampler`` Lightning injects under DDP.
            resume_at: (epoch, batches of this rank already trained in it).
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
        # An __init__ argument, not a later attribute: under DDP Lightning re-creates this object
        # from its __init__ arguments.
        self.resume_at = (int(resume_at[0]), int(resume_at[1]))
        # The iterator of a loader with workers is made before Lightning's first set_epoch.
        self.sampler.set_epoch(self.resume_at[0])

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.sampler.epoch
        rng = np.random.default_rng([self.seed, epoch, self.rank, self.world_size])
        augment = np.random.default_rng([self.seed, epoch, self.rank, self.world_size, AUGMENT])
        skip = self.resume_at[1] if epoch == self.resume_at[0] else 0
        classes = np.array(sorted(self.by_class))
        for b in range(self.num_batches):
            chosen = rng.choice(classes, size=min(self.p, len(classes)), replace=False)
            batch: list[int] = []
            for c in chosen:
                pool = self.by_class[int(c)]
                batch += rng.choice(pool, size=self.k, replace=len(pool) < self.k).tolist()
            seeds = augment.integers(0, 2**32, size=len(batch))
            if b >= skip:
                yield [SampleKey(int(i), int(s)) for i, s in zip(batch, seeds)]


class TrainingSampling:
    """How training batches are drawn: shuffled (the default), class-balanced (``balanced``),
    some classes drawn more often (``oversample``), P classes x K images (``pk_batches``) or every
    minority image with a fresh subset of the majority class each epoch (``negatives_per_epoch``).

    The options are checked together when it is made, so a bad combination fails before any data
    is read; the messages name the datamodule's options (``--data.balanced_sampler`` ...).
    """

    def __init__(self, balanced: bool = False, oversample: Optional[Mapping[str, float]] = None,
                 pk_batches: Optional[Sequence[int]] = None, negatives_per_epoch: Optional[int] = None):
        """
        Args:
            balanced: draws with inverse class-frequency weights, with replacement.
            oversample: ``{class: factor}``: images of these classes drawn ``factor`` times as
                often as the others, with replacement, as many draws per epoch as images.
            pk_batches: ``(P, K)``: batches of P classes x K images (positive pairs in every batch).
            negatives_per_epoch: N: each epoch, every image outside the largest class and N of
                the largest class, drawn afresh (``NegativeSubsampler``).
        """
        if negatives_per_epoch is not None:
            if isinstance(negatives_per_epoch, bool) or not isinstance(negatives_per_epoch, int) \
                    or negatives_per_epoch < 1:
                raise ValueError(f"--data.negatives_per_epoch must be a positive number of images, got "
                                 f"{negatives_per_epoch!r}")
            if balanced or oversample or pk_batches:
                raise ValueError("negatives_per_epoch draws its own training images; set balanced_sampler=false, "
                                 "oversample=null and pk_batches=null")
        if oversample and (balanced or pk_batches):
            raise ValueError("oversample draws its own training batches; "
                             "set balanced_sampler=false and pk_batches=null")
        if pk_batches and balanced:
            raise ValueError("pk_batches (P classes x K images) already balances the classes; "
                             "set balanced_sampler=false")
        if pk_batches and (len(pk_batches) != 2 or min(pk_batches) < 1):
            raise ValueError(f"pk_batches must be [P, K] with P, K >= 1, got {list(pk_batches)}")
        for name, factor in (oversample or {}).items():
            if not factor > 0:
                raise ValueError(f"--data.oversample: the factor of {name} must be positive, got {factor}")
        self.balanced = bool(balanced)
        self.oversample = dict(oversample or {})
        self.pk_batches = (int(pk_batches[0]), int(pk_batches[1])) if pk_batches else None
        self.negatives_per_epoch = negatives_per_epoch

    def class_factors(self, class_names: Sequence[str], dataset: str) -> np.ndarray:
        """(K,) sampling weight of each class under ``oversample`` (1 for classes it does not name)."""
        class_names = list(class_names)
        factors = np.ones(len(class_names))
        for name, factor in self.oversample.items():
            if name not in class_names:
                raise DatasetError(f"--data.oversample: {dataset} has no class {name!r}; its classes are {class_names}")
            factors[class_names.index(name)] = float(factor)
        return factors

    def loader_arguments(self, labels: Sequence[int], *, num_samples: int, batch_size: int, seed: int,
                         position: TrainPosition, world_size: int = 1, rank: int = 0,
                         class_names: Sequence[str] = (), dataset: str = "") -> dict[str, Any]:
        """The ``DataLoader`` arguments that draw the training batches: ``batch_sampler``, or
        ``sampler``, ``batch_size`` and ``drop_last``.

        Args:
            labels: the training images' classes (``num_samples`` of them, unless only shuffled).
            position: (epoch, batches of this rank done) where a resumed run starts; else
                (the trainer's epoch, 0).
            world_size, rank: the DDP processes (P x K batches get theirs from Lightning instead).
            class_names, dataset: to check ``oversample``'s class names and name them in errors.
        """
        labels = np.asarray(labels)
        if self.pk_batches:
            p, k = self.pk_batches
            # Under DDP Lightning re-creates this batch sampler with its DistributedSampler (rank, world size).
            sampler = ClassBalancedBatchSampler(labels, p, k, num_batches=max(1, len(labels) // (p * k)), seed=seed,
                                                resume_at=position)
            return {"batch_sampler": sampler}
        resume_at = (position.epoch, position.batches_done * batch_size)
        if self.negatives_per_epoch:
            sampler: SeededSampler = NegativeSubsampler(labels, self.negatives_per_epoch, seed, num_replicas=world_size,
                                                        rank=rank, resume_at=resume_at)
        else:
            weights = None
            if self.balanced:
                weights = 1.0 / np.bincount(labels, minlength=len(class_names))[labels]
            elif self.oversample:
                weights = self.class_factors(class_names, dataset)[labels]
            sampler = SeededSampler(num_samples, seed, weights, num_replicas=world_size, rank=rank, resume_at=resume_at)
        # drop_last: BatchNorm needs more than one sample in a batch.
        return {"sampler": sampler, "batch_size": batch_size, "drop_last": len(sampler) > batch_size}
