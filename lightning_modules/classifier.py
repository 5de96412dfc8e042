"""The base LightningModule for lesion classification.

It owns what every classifier shares: the loss (class-weighted cross-entropy or focal), one
torchmetrics ``MetricCollection`` per stage (macro one-vs-rest AUROC, balanced accuracy = macro
recall, accuracy), the per-class AUROC / confusion matrix / ROC curves computed at epoch end
(``epoch_report``, drawn by :class:`~lightning_modules.callbacks.evaluation_figures.EvaluationFigures`),
and the optimiser wiring. Subclasses only build ``self.net`` (``build_net``) and, when the network
returns more than logits, override ``forward``.

Batches are dicts from :class:`datamodules.dataset.LesionDataset`: ``image``, ``meta``,
``label``, ``index`` (and ``mask`` where the data has lesion masks).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassRecall,
    MulticlassROC,
)

from lightning_modules.attention import LesionMass
from lightning_modules.backbones import normalisation_mismatch
from lightning_modules.losses import classification_loss
from lightning_modules.schedules import WarmupCosine

STAGES = ("train", "val", "test")


class LesionClassifier(L.LightningModule):
    #: Names of the attention maps the model exposes (``attention_maps``); on data with lesion
    #: masks each one's lesion mass is logged as ``<stage>/lesion_mass_<name>`` (mean: ``lesion_mass``).
    attention_names: Sequence[str] = ()

    def __init__(
        self,
        num_classes: int,
        meta_dim: int = 0,
        class_names: Optional[list[str]] = None,
        class_weights: Optional[list[float]] = None,
        loss: str = "ce",
        focal_gamma: float = 2.0,
        weighted_loss: bool = True,
        monitor: str = "val/auroc",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: Optional[LRSchedulerCallable] = None,
    ):
        """
        Args:
            num_classes, meta_dim, class_names, class_weights: from the datamodule (the CLI links
                them; set them yourself when building a module by hand).
            loss: ``ce`` (cross-entropy) or ``focal``; ``weighted_loss`` applies the training
                split's inverse class frequencies.
            monitor: the validation metric that selects checkpoints and drives plateau schedules.
            optimizer, scheduler: factories (LightningCLI ``class_path`` configs).
        """
        super().__init__()
        # The optimiser/scheduler factories are config, not state: keep them out of the checkpoint
        # so it loads with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.class_names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = classification_loss(loss, class_weights if weighted_loss else None, focal_gamma)
        self.net = self.build_net()

        def scores(prefix: str) -> MetricCollection:
            return MetricCollection(
                {
                    "auroc": MulticlassAUROC(num_classes, average="macro"),
                    "bacc": MulticlassRecall(num_classes, average="macro"),
                    "acc": MulticlassAccuracy(num_classes, average="micro"),
                },
                prefix=prefix,
            )

        self.train_metrics = scores("train/")
        self.val_metrics = scores("val/")
        self.test_metrics = scores("test/")
        # Not scalars: computed at epoch end into `epoch_report` (figures, metrics.json).
        self.val_details = MetricCollection(
            {"auroc_per_class": MulticlassAUROC(num_classes, average=None),
             "confusion_matrix": MulticlassConfusionMatrix(num_classes)}
        )  # fmt: skip
        self.test_details = self.val_details.clone()
        self.test_details.add_metrics({"roc": MulticlassROC(num_classes)})
        self.epoch_report: dict[str, dict[str, Any]] = {}
        self.lesion_mass = nn.ModuleDict(
            {f"{stage}_{name}": LesionMass() for stage in STAGES for name in self.attention_names}
        )

    def setup(self, stage: str) -> None:
        # Pretrained features expect the normalisation they were trained with; a mismatch trains
        # fine but wastes the pretraining, so say so before the first epoch.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data = getattr(datamodule, "hparams", {})
        if stage == "fit" and (self.hparams.get("pretrained") or self.hparams.get("weights_path")) \
                and "normalize_mean" in data and "backbone" in self.hparams:
            problem = normalisation_mismatch(self.hparams.backbone, data["normalize_mean"], data["normalize_std"])
            if problem:
                rank_zero_warn(problem)

    # -- the network ---------------------------------------------------------------------------
    def build_net(self) -> nn.Module:
        raise NotImplementedError("subclasses build their network here")

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.net(image, meta)

    # -- steps ---------------------------------------------------------------------------------
    def compute_loss(self, batch: dict, stage: str) -> tuple[torch.Tensor, torch.Tensor, dict, Optional[dict]]:
        """``(logits, loss, terms, maps)`` for a batch. Subclasses whose loss has more than the
        classification term (attention regularisers, ProtoPNet costs) override this and return
        each term in ``terms`` (logged as ``<stage>/<name>``), and models with attention return
        their maps (or ``None``) so their lesion mass is scored on data with masks."""
        logits = self(batch["image"], batch["meta"])
        return logits, self.criterion(logits, batch["label"]), {}, None

    def _step(self, batch: dict, stage: str) -> dict:
        logits, loss, terms, maps = self.compute_loss(batch, stage)
        if maps is not None:
            self.update_lesion_mass(stage, maps, batch)
        probs = logits.detach().float().softmax(dim=1)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(probs, batch["label"])
        if stage != "train":
            getattr(self, f"{stage}_details").update(probs, batch["label"])
        n = batch["label"].shape[0]
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=n, sync_dist=stage != "train")
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=stage != "train")
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=n)
        return {"loss": loss, "probs": probs, "index": batch["index"], "label": batch["label"]}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        out = self._step(batch, "test")
        return {"probs": out["probs"], "index": out["index"], "label": out["label"]}

    def class_probabilities(self, image: torch.Tensor, meta: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, K) class probabilities (``None`` for models that do not classify on their own)."""
        return self(image, meta).float().softmax(dim=1)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        probs = self(batch["image"], batch["meta"]).float().softmax(dim=1)
        return {"probs": probs, "index": batch["index"]}

    # -- epoch-end details: per-class AUROC, confusion matrix, ROC curves ------------------------
    def on_train_epoch_end(self) -> None:
        self.log_lesion_mass("train")

    def on_validation_epoch_end(self) -> None:
        self._report("val")
        self.log_lesion_mass("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")
        self.log_lesion_mass("test")

    # -- does the attention sit on the lesion? ------------------------------------------------------
    def update_lesion_mass(self, stage: str, maps: dict[str, torch.Tensor], batch: dict) -> None:
        if "mask" in batch and not self.trainer.sanity_checking:
            for name, attention in maps.items():
                self.lesion_mass[f"{stage}_{name}"].update(attention.detach(), batch["mask"])

    def log_lesion_mass(self, stage: str) -> None:
        metrics = [self.lesion_mass[f"{stage}_{name}"] for name in self.attention_names]
        if not metrics or not self.any_rank_counted(metrics[0]):
            return
        values = [metric.compute() for metric in metrics]
        for name, value in zip(self.attention_names, values):
            self.log(f"{stage}/lesion_mass_{name}", value)
        self.log(f"{stage}/lesion_mass", torch.stack(values).mean(), prog_bar=stage == "val")
        for metric in metrics:
            metric.reset()

    def any_rank_counted(self, metric: LesionMass) -> bool:
        """Whether any process scored an image. Decided together (a collective), because
        ``compute()`` syncs across processes and must be called by all of them or by none."""
        return bool(self.trainer.strategy.reduce_boolean_decision(int(metric.count) > 0, all=False))

    def _report(self, stage: str) -> None:
        details = getattr(self, f"{stage}_details")
        if self.trainer.sanity_checking:
            details.reset()
            return
        values = details.compute()
        details.reset()
        report = {
            "auroc_per_class": {name: float(v) for name, v in zip(self.class_names, values["auroc_per_class"])},
            "confusion_matrix": values["confusion_matrix"].cpu().long().tolist(),
        }
        if "roc" in values:
            fpr, tpr, _ = values["roc"]
            report["roc"] = [(f.cpu().numpy(), t.cpu().numpy()) for f, t in zip(fpr, tpr)]
        for name, value in report["auroc_per_class"].items():
            self.log(f"{stage}/auroc_{name}", value, sync_dist=False)
        self.epoch_report[stage] = report

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
            wanted = "min" if "loss" in self.hparams.monitor else "max"
            if scheduler.mode != wanted:  # ReduceLROnPlateau defaults to "min": wrong for AUROC
                raise ValueError(f"ReduceLROnPlateau watches {self.hparams.monitor}: set its mode: {wanted}")
            config["monitor"] = self.hparams.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lets `experiments.predict` rebuild the right class from a weights-only checkpoint.
        cls = type(self)
        checkpoint["dermattn_module"] = f"{cls.__module__}.{cls.__qualname__}"
