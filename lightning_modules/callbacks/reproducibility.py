"""The model's random streams (dropout, random initialisations during training) per epoch, and
what a resumed run needs to continue an epoch exactly.

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
from torchmetrics import Metric

from datamodules.seeding import TrainPosition, derive_seed, rng_states, run_seed, seed_global_rngs, set_rng_states
from lightning_modules.lightning_compat import (add_training_epoch_sums, restore_metric_state, resumed_mid_epoch,
                                               training_epoch_sums, training_position)

MODEL_STREAM = 2  # mixed into the seed: the data streams use 0 and 1 (datamodules/samplers.py)


class EpochSeeds(L.Callback):
    """Changes the global RNG states: reseeds them as each training epoch starts and, in a run
    resumed mid-epoch, sets them to the checkpoint's before its first batch.

    It also carries where training stands (``checkpoint["train_position"]``, the epoch to run next
    and how many of its batches are done) from a checkpoint to the datamodule's
    ``resume_training_at``, so the training sampler skips what was trained before an interruption.
    """

    def __init__(self) -> None:
        self._restore: dict | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed_global_rngs(derive_seed(run_seed(), MODEL_STREAM, trainer.current_epoch, trainer.global_rank))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's own judgement of whether the epoch is re-entered (no on_train_epoch_start).
        if self._restore is not None and resumed_mid_epoch(trainer):
            set_rng_states(self._restore)
        self._restore = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        position = training_position(trainer)
        if position is not None:
            checkpoint["train_position"] = list(position)
            checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Called after the datamodule's load_state_dict (older checkpoints keep the position there).
        self._restore = checkpoint.get("rng_states")
        resume_training_at = getattr(trainer.datamodule, "resume_training_at", None)
        if "train_position" in checkpoint and resume_training_at is not None:
            resume_training_at(TrainPosition(*checkpoint["train_position"]))


class MidEpochMetrics(L.Callback):
    """Epoch-level training metrics of an epoch interrupted in its middle cover the whole epoch.

    An epoch's ``train/*`` values accumulate over its batches: in torchmetrics states (AUROC's
    predictions, recall counts, lesion mass) and in Lightning's sums of ``self.log(...,
    on_epoch=True)`` values. Neither is in a checkpoint, so a run resumed from a mid-epoch
    ``interrupted.ckpt`` would report epoch means over the batches after the resume only. This
    callback stores both in mid-epoch checkpoints and puts them back into the module's metrics and
    Lightning's sums: the metric states before the first resumed batch, Lightning's sums after it
    (they are created by that batch's ``self.log``; adding the stored sum to a sum that started at
    zero gives the uninterrupted value exactly).
    """

    def __init__(self) -> None:
        self._restore: dict | None = None
        self._pending_sums: dict | None = None

    @staticmethod
    def _metrics(pl_module: L.LightningModule) -> dict[str, Metric]:
        return {name: m for name, m in pl_module.named_modules() if isinstance(m, Metric)}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        position = training_position(trainer)
        if position is None or position.batches_done == 0 or not trainer.training:
            return
        metrics = {}
        for name, metric in self._metrics(pl_module).items():
            if metric.update_count:
                metrics[name] = {"update_count": int(metric.update_count),
                                 "states": {k: list(v) if isinstance(v, list) else v
                                            for k, v in metric.metric_state.items()}}  # fmt: skip
        checkpoint["mid_epoch_metrics"] = {"metrics": metrics, "sums": training_epoch_sums(trainer)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._restore = checkpoint.get("mid_epoch_metrics")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved, self._restore = self._restore, None
        if saved is None or not resumed_mid_epoch(trainer):
            return
        metrics = self._metrics(pl_module)
        for name, entry in saved["metrics"].items():
            restore_metric_state(metrics[name], entry["states"], entry["update_count"])
        self._pending_sums = saved["sums"]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._pending_sums:
            add_training_epoch_sums(trainer, self._pending_sums)
        self._pending_sums = None
