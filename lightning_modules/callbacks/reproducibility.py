"""The model's random streams (dropout, random initialisations during training) per epoch.

``seed_everything`` seeds the global RNGs once, at the start of a process; a run resumed at
epoch k would then draw epoch 0's dropout masks again, and anything that touched the RNGs
between epochs (a sanity check, a dataloader iterator) would shift them. Here each training
epoch starts from RNGs seeded by (run seed, epoch, rank), so an epoch's draws do not depend on
what ran before it, in this process or another.

Every checkpoint also stores the RNG states of its moment. A run that Lightning resumes inside an
epoch (``interrupted.ckpt`` written mid-epoch, or as an epoch had just begun: a SIGTERM that
arrives during validation is acted on at the next epoch's first batch) restores them before its
first batch, since Lightning does not start that epoch (nor call ``on_train_epoch_start``) again.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from datamodules.seeding import derive_seed, rng_states, run_seed, seed_global_rngs, set_rng_states, training_position

MODEL_STREAM = 2  # mixed into the seed: the data streams use 0 and 1 (datamodules/samplers.py)


class EpochSeeds(L.Callback):
    def __init__(self) -> None:
        self._restore: dict | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed_global_rngs(derive_seed(run_seed(), MODEL_STREAM, trainer.current_epoch, trainer.global_rank))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's own judgement of whether the epoch is re-entered (no on_train_epoch_start).
        if self._restore is not None and trainer.fit_loop.restarted_mid_epoch:
            set_rng_states(self._restore)
        self._restore = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if training_position(trainer) is not None:
            checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._restore = checkpoint.get("rng_states")
