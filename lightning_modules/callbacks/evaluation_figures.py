"""Confusion matrix (every validation epoch and at test) and ROC curves (at test) as pictures:
logged to W&B and, for the test split, saved in the run folder. Reads the module's
:class:`~lightning_modules.contracts.EvaluationReport` (modules that ``ReportsEvaluation``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L

from lightning_modules.contracts import ReportsEvaluation
from lightning_modules.utils.atomic_io import write_png
from lightning_modules.utils.image_logging import log_images
from lightning_modules.utils.plots import confusion_matrix_figure, roc_figure


class EvaluationFigures(L.Callback):
    def __init__(self, dirpath: Optional[str] = None):
        """``dirpath``: where the test figures go; default: the trainer's run folder."""
        self.dirpath = dirpath

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not isinstance(pl_module, ReportsEvaluation):
            return
        report = pl_module.evaluation_report("val")
        if report is None:
            return
        image = confusion_matrix_figure(report.confusion_matrix, pl_module.class_names,
                                        f"validation, epoch {trainer.current_epoch}")  # fmt: skip
        log_images(trainer, "val/confusion_matrix", [image])

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not isinstance(pl_module, ReportsEvaluation):
            return
        report = pl_module.evaluation_report("test")
        if report is None:
            return
        figures = {"confusion_matrix": confusion_matrix_figure(report.confusion_matrix, pl_module.class_names, "test")}
        if report.roc is not None:
            aucs = [report.auroc_per_class[name] for name in pl_module.class_names]
            figures["roc"] = roc_figure(report.roc, aucs, pl_module.class_names, "test, one-vs-rest")
        for name, image in figures.items():
            log_images(trainer, f"test/{name}", [image])
            write_png(Path(self.dirpath or trainer.default_root_dir) / f"test_{name}.png", image)
