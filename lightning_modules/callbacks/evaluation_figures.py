"""Confusion matrix (every validation epoch and at test) and ROC curves (at test) as pictures:
logged to W&B and, for the test split, saved in the run folder's ``plots/``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L

from lightning_modules.atomic_io import write_png
from lightning_modules.callbacks.image_logging import log_images
from lightning_modules.plots import confusion_matrix_figure, roc_figure


class EvaluationFigures(L.Callback):
    def __init__(self, dirpath: Optional[str] = None):
        self.dirpath = dirpath

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val" not in getattr(pl_module, "epoch_report", {}):
            return
        report = pl_module.epoch_report["val"]
        image = confusion_matrix_figure(
            report["confusion_matrix"], pl_module.class_names, f"validation, epoch {trainer.current_epoch}"
        )
        log_images(trainer, "val/confusion_matrix", [image])

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = getattr(pl_module, "epoch_report", {}).get("test")
        if report is None or not trainer.is_global_zero:
            return
        figures = {
            "confusion_matrix": confusion_matrix_figure(report["confusion_matrix"], pl_module.class_names, "test"),
        }
        if "roc" in report:
            aucs = [report["auroc_per_class"][name] for name in pl_module.class_names]
            figures["roc"] = roc_figure(report["roc"], aucs, pl_module.class_names, "test, one-vs-rest")
        for name, image in figures.items():
            log_images(trainer, f"test/{name}", [image])
            if self.dirpath:
                write_png(Path(self.dirpath) / f"test_{name}.png", image)
