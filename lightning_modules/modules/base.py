"""What every dermattn LightningModule shares: the injected network, optimiser wiring, the
lesion-mass score of attention networks, and the evaluation report callbacks read.

The network comes from the config (``model.init_args.net``: a ``class_path`` and its
``init_args``), as a callable of ``(num_classes, meta_dim)``; the module never re-lists the
network's arguments. Two subclasses say how to train it:

- :class:`~lightning_modules.modules.classifier.LesionClassifier`: any network that maps
  ``(image, meta)`` to logits (MetaBlock and baselines, AttnVGG, soft attention, a new one);
  :class:`~lightning_modules.modules.protopnet.ProtoPNetModule` extends it with ProtoPNet's stages;
- :class:`~lightning_modules.modules.metric_learning.MetricLearningModule`: embedding networks
  (ABE-M), scored by retrieval and k-NN classification.

Batches are dicts from :class:`datamodules.dataset.LesionDataset`: ``image``, ``meta``,
``label``, ``index`` (and ``mask`` where the data has lesion masks).
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.optim.lr_scheduler import ReduceLROnPlateau

from datamodules.arguments import InvalidOption
from lightning_modules.contracts import AttentionNet, EvaluationReport, NetFactory
from lightning_modules.metrics.lesion_mass import LesionMass
from lightning_modules.modules.scores import ClassificationScores, LesionMassScores
from lightning_modules.training.finite_guard import FiniteGuard, check_weights
from lightning_modules.training.schedules import WarmupCosine

#: Where a checkpoint calibrated after training keeps its calibration (``{"temperature": T, ...}``).
CALIBRATION_KEY = "calibration"


class DermModule(L.LightningModule):
    #: Whether some trainable parameters go without gradients in some steps (frozen for a stage):
    #: DDP must then look for them after each forward pass, and the CLI picks that DDP variant.
    toggles_requires_grad: ClassVar[bool] = False

    def __init__(
        self,
        net: NetFactory,
        num_classes: int,
        meta_dim: int = 0,
        class_names: Optional[list[str]] = None,
        class_weights: Optional[list[float]] = None,
        monitor: str = "val/auroc",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: Optional[LRSchedulerCallable] = None,
        compile: bool = False,
        channels_last: bool = False,
    ):
        """
        Args:
            net: the network, ``net(num_classes, meta_dim)`` (in YAML: ``class_path`` + ``init_args``).
            num_classes, meta_dim, class_names, class_weights: from the datamodule (the CLI links
                them; set them yourself when building a module by hand). ``class_weights`` are the
                training split's inverse class frequencies, for losses that weight classes.
            monitor: the validation metric that selects checkpoints and drives plateau schedules.
            optimizer, scheduler: factories (LightningCLI ``class_path`` configs).
            compile: ``torch.compile`` the network when the trainer sets the model up
                (``nn.Module.compile``, in place, so checkpoints keep their keys); for GPUs.
            channels_last: keep the network's weights and the batches' images in NHWC memory
                order, which tensor-core convolutions prefer under mixed precision. Neither
                changes what is computed.
        """
        super().__init__()
        if not isinstance(monitor, str) or not monitor.strip():
            raise InvalidOption(f"--model.init_args.monitor={monitor!r}: must name a logged validation metric, "
                                "e.g. val/auroc")
        # The optimiser/scheduler factories are config, not state: keep them out of the checkpoint
        # so it loads with torch.load(weights_only=True). The network's config (a dict when the CLI
        # built the module) stays: `load_from_checkpoint` rebuilds the network from it.
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        if not isinstance(self.hparams.get("net"), dict):
            self.hparams.pop("net", None)  # a callable given by hand: not a plain value
        self.class_names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.net = net(num_classes, meta_dim)
        self.attention_names = tuple(self.net.attention_names) if isinstance(self.net, AttentionNet) else ()
        self.lesion_mass = LesionMassScores(self.attention_names)
        self._reports: dict[str, EvaluationReport] = {}
        self.finite_guard = FiniteGuard()
        #: Divides the logits in ``class_probabilities`` (prediction), never in training or the test
        #: step; 1 unless the checkpoint holds one fitted on the validation split (``--calibrate``).
        self.temperature = 1.0

    # -- what the run watches --------------------------------------------------------------------
    @property
    def monitor(self) -> str:
        """The validation metric that selects checkpoints, stops early and drives plateau schedules
        (the ``monitor`` argument; ``monitor: auto`` in ``checkpoint:`` / ``early_stopping:`` means this)."""
        return self.hparams.monitor

    @property
    def monitor_mode(self) -> str:
        """Whether :attr:`monitor` improves downwards (``min``) or upwards (``max``)."""
        return self.mode_of(self.monitor)

    @staticmethod
    def mode_of(metric: str) -> str:
        """``min`` for losses, ``max`` for the scores every module logs (AUROC, Recall@K, ...); a module
        that logs a score which improves downwards overrides this."""
        return "min" if "loss" in metric else "max"

    # -- calibration ---------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint calibrated after training (``--calibrate=temperature``) carries its
        temperature under :data:`CALIBRATION_KEY`; one without predicts with temperature 1."""
        self.temperature = float((checkpoint.get(CALIBRATION_KEY) or {}).get("temperature", 1.0))

    # -- GPU options (compile, channels_last) --------------------------------------------------
    def configure_model(self) -> None:
        if self.hparams.get("channels_last"):
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.get("compile") and not getattr(self, "_compiled", False):
            self.net.compile()
            self._compiled = True

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.hparams.get("channels_last") and isinstance(batch, dict):
            image = batch.get("image")
            if isinstance(image, torch.Tensor) and image.dim() == 4:
                batch["image"] = image.contiguous(memory_format=torch.channels_last)
        return batch

    # -- what callbacks may read -----------------------------------------------------------------
    def evaluation_report(self, stage: str) -> Optional[EvaluationReport]:
        """Per-class AUROC, confusion matrix (and test ROC curves) of the last ``stage`` epoch."""
        return self._reports.get(stage)

    def report(self, stage: str, scores: ClassificationScores) -> None:
        """Compute ``stage``'s report from ``scores`` at epoch end, log its per-class AUROC and keep
        it for :meth:`evaluation_report` (nothing during the sanity check)."""
        report = scores.report(stage, discard=self.trainer.sanity_checking)
        if report is None:
            return
        for name, value in report.auroc_per_class.items():
            self.log(f"{stage}/auroc_{name}", value, sync_dist=False)
        self._reports[stage] = report

    # -- does the attention sit on the lesion? ---------------------------------------------------
    def update_lesion_mass(self, stage: str, maps: Optional[dict[str, torch.Tensor]], batch: dict) -> None:
        if maps and "mask" in batch and not self.trainer.sanity_checking:
            self.lesion_mass.update(stage, maps, batch["mask"])

    def log_lesion_mass(self, stage: str) -> None:
        for name, value in self.lesion_mass.compute(stage, self.any_rank_counted).items():
            self.log(f"{stage}/{name}", value, prog_bar=stage == "val" and name == "lesion_mass")

    def any_rank_counted(self, metric: LesionMass) -> bool:
        """Whether any process scored an image. Decided together (a collective), because
        ``compute()`` syncs across processes and must be called by all of them or by none."""
        return bool(self.trainer.strategy.reduce_boolean_decision(int(metric.count) > 0, all=False))

    # -- a diverging run stops (lightning_modules/training/finite_guard.py) ---------------------
    def watch_training_loss(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Record a training step's loss and its terms for the finiteness check (no host sync)."""
        self.finite_guard.record_training(self.global_step, loss, terms)

    def watch_outputs(self, stage: str, batch_idx: int, outputs: dict[str, torch.Tensor]) -> None:
        """Record an evaluation batch's outputs (probabilities, embeddings, loss) for the check at
        epoch end (no host sync)."""
        self.finite_guard.record_outputs(stage, batch_idx, outputs)

    def _any_process(self, bad: bool) -> bool:
        return bool(self.trainer.strategy.reduce_boolean_decision(bad, all=False))

    def check_training_loss(self) -> None:
        """Raise :class:`~lightning_modules.errors.NonFiniteError` if a training loss so far was
        NaN or infinite (a collective under DDP: every process calls it at the same step)."""
        self.finite_guard.check_training(lambda step: f"training step {step} (epoch {self.current_epoch})",
                                         self._any_process)

    def check_outputs(self, stage: str) -> None:
        """Raise :class:`~lightning_modules.errors.NonFiniteError` if an output of this ``stage``
        epoch was NaN or infinite, before anything is scored from them (a collective under DDP)."""
        checkpoint = self.trainer.ckpt_path if stage == "test" else None
        self.finite_guard.check_outputs(stage, self.current_epoch, self._any_process, checkpoint,
                                        untrained=self.trainer.sanity_checking and self.global_step == 0)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Read on a CPU every step (nothing to wait for); on a device as often as Lightning reads
        # logged values (log_every_n_steps), and at the epoch's last batch, before validation.
        trainer = self.trainer
        every = 1 if self.device.type == "cpu" and trainer.world_size == 1 else max(1, trainer.log_every_n_steps)
        if batch_idx == trainer.num_training_batches - 1 or self.global_step % every == 0:
            self.check_training_loss()

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # At the last batch: Lightning computes the logged epoch metrics right after it, before
        # on_validation_epoch_end (which checks again for loaders of unknown length).
        trainer = self.trainer
        batches = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        if batch_idx == batches[dataloader_idx] - 1:
            self.check_outputs("val")

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == self.trainer.num_test_batches[dataloader_idx] - 1:
            self.check_outputs("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        check_weights(checkpoint.get("state_dict", {}), f"the checkpoint of epoch {checkpoint.get('epoch')}")

    # -- optimisation --------------------------------------------------------------------------
    def parameter_groups(self) -> Any:
        """What the optimiser gets; subclasses return per-part groups (e.g. backbone vs head)."""
        return self.parameters()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, WarmupCosine):
            scheduler.run_epochs = self.trainer.max_epochs
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, ReduceLROnPlateau):
            if scheduler.mode != self.monitor_mode:  # ReduceLROnPlateau defaults to "min": wrong for AUROC
                raise ValueError(f"ReduceLROnPlateau watches {self.monitor}: set its mode: {self.monitor_mode}")
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}
