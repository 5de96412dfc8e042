"""Random draws of the data pipeline as functions of (run seed, epoch, position, rank).

A resumed run must draw exactly what the uninterrupted run would have drawn. Streams that are
seeded once and then advanced (a DataLoader generator, a transform's generator, the global RNG)
restart from the run seed after a resume and replay epoch 0. Here every epoch's sample order and
every sample's augmentation seed are derived afresh from the run seed and the epoch, so the
epoch, and where in it a run stopped, is all a resume needs to know.

- ``SampleKey``: what the training samplers yield, an index with its own augmentation seed; the
  dataset seeds the transform with it, in whichever DataLoader worker the item lands (so the
  number of workers changes nothing).
- ``TrainPosition``: where a run stands (next epoch, batches of it done), stored in checkpoints
  so the sampler skips what was trained before an interruption.
"""

from __future__ import annotations

import os
import random
from typing import NamedTuple

import numpy as np
import torch


class SampleKey(NamedTuple):
    """A training sample: its index in the dataset and the seed of its augmentation."""

    index: int
    seed: int


class TrainPosition(NamedTuple):
    """Where training stands: the epoch to run next and how many of its batches are done."""

    epoch: int
    batches_done: int


def run_seed() -> int:
    """The run's seed: the one Lightning's ``seed_everything`` recorded (``PL_GLOBAL_SEED``), else
    torch's initial seed. Not ``torch.initial_seed()`` alone: the per-epoch reseeding of the model's
    RNGs (``callbacks/reproducibility.py``) changes that during training."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else int(torch.initial_seed()) % 2**63


def derive_seed(*keys: int) -> int:
    """A 32-bit seed that is a function of ``keys`` only (numpy's SeedSequence hashing: nearby keys
    give unrelated streams)."""
    return int(np.random.SeedSequence([int(k) % 2**63 for k in keys]).generate_state(1)[0])


def seed_transform(transform, seed: int) -> None:
    """Seed an albumentations 2.x pipeline for one image.

    One numpy and one Python generator are shared by every step, as ``Compose`` does at
    construction. Not ``Compose.set_random_seed``: that gives every step its *own* generator
    seeded with the same number, so all steps draw the same first random number and, e.g., the
    transpose, the vertical and the horizontal flip (each p=0.5) fire together or not at all.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def rng_states() -> dict:
    """The global RNG states (torch, CUDA, numpy, Python) as checkpoint-safe values: tensors,
    numbers and strings only, so ``torch.load(weights_only=True)`` reads them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [int(version), list(state), gauss_next],
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss_next = states["python"]
    random.setstate((version, tuple(state), gauss_next))


def seed_global_rngs(seed: int) -> None:
    """torch (every device), numpy and Python's ``random`` from one seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
