"""The run's checkpoints: the best by the model's ``monitor`` and ``last.ckpt``, the latest epoch.

Lightning 2.6's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only in a step where it
also writes a top-k checkpoint ("a last.ckpt copy whenever a checkpoint file gets saved"). With
``save_top_k=1`` and a metric that stopped improving, ``last.ckpt`` then stays at the best epoch,
and a run resumed from it (after a SIGKILL, say) would train the later epochs a second time.
``RunCheckpoint`` writes ``last.ckpt`` at the end of every epoch, improved or not.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_modules.lightning_compat import (checkpoint_skipped_now, checkpoints_at_train_epoch_end,
                                               save_last_checkpoint)


class RunCheckpoint(ModelCheckpoint):
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not checkpoints_at_train_epoch_end(self, trainer):
            self._save_latest(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if checkpoints_at_train_epoch_end(self, trainer):
            self._save_latest(trainer)

    def _save_latest(self, trainer: L.Trainer) -> None:
        # Skipped when this step already saved (then the parent wrote last.ckpt with it), in
        # sanity checks, outside fit and under fast_dev_run, as the parent does.
        if self.save_last and not checkpoint_skipped_now(self, trainer):
            save_last_checkpoint(self, trainer)
