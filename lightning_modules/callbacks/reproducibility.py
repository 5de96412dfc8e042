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


class MidEpochMetrics(L.Callback):
    """Epoch-level training metrics of an epoch interrupted in its middle cover the whole epoch.

    An epoch's ``train/*`` values accumulate over its batches: in torchmetrics states (AUROC's
    predictions, recall counts, lesion mass) and in Lightning's sums of ``self.log(...,
    on_epoch=True)`` values. Neither is in a checkpoint, so a run resumed from a mid-epoch
    ``interrupted.ckpt`` would report epoch means over the batches after the resume only. This
    callback stores both in mid-epoch checkpoints and puts them back: the metric states before the
    first resumed batch, Lightning's sums after it (they are created by that batch's ``self.log``;
    adding the stored sum to a sum that started at zero gives the uninterrupted value exactly).

    Lightning's sums are read from ``trainer.fit_loop.epoch_loop._results`` (Lightning 2.6 keeps
    no public handle on them); a version without it stores and restores the metric states only.
    """

    def __init__(self) -> None:
        self._restore: dict | None = None
        self._pending_sums: dict | None = None

    @staticmethod
    def _metrics(pl_module: L.LightningModule):
        from torchmetrics import Metric

        return {name: m for name, m in pl_module.named_modules() if isinstance(m, Metric)}

    @staticmethod
    def _sums(trainer: L.Trainer) -> dict:
        return getattr(trainer.fit_loop.epoch_loop, "_results", None) or {}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        position = training_position(trainer)
        if position is None or position.batches_done == 0 or not trainer.training:
            return
        metrics = {}
        for name, metric in self._metrics(pl_module).items():
            if metric._update_count:
                states = {key: getattr(metric, key) for key in metric._defaults}
                metrics[name] = {"update_count": int(metric._update_count),
                                 "states": {k: list(v) if isinstance(v, list) else v for k, v in states.items()}}  # fmt: skip
        sums = {}
        for key, result in self._sums(trainer).items():
            if getattr(result, "is_tensor", False) and result.meta.on_epoch:
                sums[key] = {"value": result.value.detach().clone()}
                if result.meta.is_mean_reduction:
                    sums[key]["cumulated_batch_size"] = result.cumulated_batch_size.detach().clone()
        checkpoint["mid_epoch_metrics"] = {"metrics": metrics, "sums": sums}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._restore = checkpoint.get("mid_epoch_metrics")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved, self._restore = self._restore, None
        if saved is None or not trainer.fit_loop.restarted_mid_epoch:
            return
        metrics = self._metrics(pl_module)
        for name, entry in saved["metrics"].items():
            metric = metrics[name]
            for key, value in entry["states"].items():
                if isinstance(value, list):
                    value = [v.to(metric.device) for v in value]
                else:
                    value = value.to(metric.device)
                setattr(metric, key, value)
            metric._update_count = entry["update_count"]
            metric._computed = None
        self._pending_sums = saved["sums"]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self._pending_sums:
            return
        results = self._sums(trainer)
        for key, entry in self._pending_sums.items():
            result = results.get(key)
            if result is None:
                continue
            result.value = entry["value"].to(result.value.device) + result.value
            if "cumulated_batch_size" in entry:
                stored = entry["cumulated_batch_size"].to(result.cumulated_batch_size.device)
                result.cumulated_batch_size = stored + result.cumulated_batch_size
        self._pending_sums = None
