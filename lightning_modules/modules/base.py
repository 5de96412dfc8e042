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

from lightning_modules.contracts import AttentionNet, EvaluationReport, NetFactory
from lightning_modules.metrics.lesion_mass import LesionMass
from lightning_modules.modules.scores import ClassificationScores, LesionMassScores
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
