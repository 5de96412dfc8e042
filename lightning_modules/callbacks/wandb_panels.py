"""Interactive Weights & Biases panels beside the pictures: the validation and test confusion
matrices (``wandb.plot.confusion_matrix``), per-class ROC and precision-recall curves of the test
split, a sortable table of every test prediction (thumbnail, attention overlay where the network
has attention, label, prediction, probability per class, patient/lesion group) and the test
scores of the best checkpoint in the run summary (with the interval ends as ``best/test/<metric>_ci_low``
/ ``_ci_high``), the evaluation report's subgroup rows and operating points as tables.

It observes: the test panels are built from the run's own ``predictions.csv`` and
``metrics.json`` (written by ``ResultsWriter`` just before), so the dashboard shows exactly
the files' numbers. Without a W&B logger it does nothing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from lightning_modules.contracts import AttentionNet, ReportsEvaluation, evaluation_data
from lightning_modules.modules.base import DermModule
from lightning_modules.utils.images import denormalise, normalise, overlay, upsample


def wandb_logger(trainer: L.Trainer) -> Optional[WandbLogger]:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def labels_from_confusion(matrix: list[list[int]]) -> tuple[list[int], list[int]]:
    """``(y_true, y_pred)`` with one entry per counted image of a confusion matrix (rows: true)."""
    y_true, y_pred = [], []
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            y_true += [i] * int(count)
            y_pred += [j] * int(count)
    return y_true, y_pred


def confusion_plot(y_true: list[int], y_pred: list[int], names: list[str], title: str):
    import wandb

    return wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=list(names), title=title)


def summary_scores(test: dict[str, Any]) -> dict[str, float]:
    """``best/test/<key>`` for every number of ``metrics.json``'s ``test``; an interval ``[low, high]``
    as ``<key>_low`` / ``<key>_high``; the temperature scaling's ECE after and temperature."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    out = {f"best/test/{k}": v for k, v in test.items() if number(v)}
    for key, value in test.items():
        if key.endswith("_ci") and isinstance(value, list) and len(value) == 2:
            out.update({f"best/test/{key}_{end}": v for end, v in zip(("low", "high"), value) if number(v)})
    scaling = (test.get("calibration") or {}).get("temperature_scaling") or {}
    for key in ("temperature", "ece_after"):
        if number(scaling.get(key)):
            out[f"best/test/temperature_scaling/{key}"] = scaling[key]
    return out


def report_tables(folder: Path, test: dict[str, Any]) -> dict[str, Any]:
    """The evaluation report as W&B tables: ``subgroups.csv`` and the operating points."""
    import wandb

    tables: dict[str, Any] = {}
    subgroups = folder / "subgroups.csv"
    if subgroups.is_file():
        with open(subgroups, newline="") as handle:
            rows = list(csv.reader(handle))
        if len(rows) > 1:
            tables["test/subgroups"] = wandb.Table(columns=rows[0], data=rows[1:])
    points = test.get("operating_points") or []
    if points:
        columns = ["positive", "target_sensitivity", "chosen_on", "threshold", "sensitivity", "sensitivity_ci",
                   "specificity", "specificity_ci", "n_positive", "n_negative", "note"]
        data = [[json.dumps(p.get(c)) if isinstance(p.get(c), list) else p.get(c) for c in columns] for p in points]
        tables["test/operating_points"] = wandb.Table(columns=columns, data=data)
    return tables


class WandbPanels(L.Callback):
    def __init__(self, dirpath: Optional[str] = None, max_table_rows: int = 1000, thumbnail_size: int = 96):
        """``dirpath``: where ``ResultsWriter`` wrote the test files; default: the trainer's run folder
        (``default_root_dir``). ``max_table_rows``: the predictions table holds at most this many
        test images (the first in the test split's order); ``thumbnail_size``: their pictures' side
        in pixels."""
        self.dirpath = dirpath
        self.max_table_rows, self.thumbnail_size = max_table_rows, thumbnail_size

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = wandb_logger(trainer)
        if logger is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        report = pl_module.evaluation_report("val") if isinstance(pl_module, ReportsEvaluation) else None
        if report is not None:
            y_true, y_pred = labels_from_confusion(report.confusion_matrix)
            self._log(logger, trainer, {"val/confusion_matrix_plot": confusion_plot(y_true, y_pred, pl_module.class_names,
                                                                                    "validation")})

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = wandb_logger(trainer)
        folder = Path(self.dirpath or trainer.default_root_dir)
        predictions, metrics = folder / "predictions.csv", folder / "metrics.json"
        if logger is None or not trainer.is_global_zero or not predictions.is_file() or not metrics.is_file():
            return
        import wandb

        rows = list(csv.DictReader(open(predictions)))
        names = json.loads(metrics.read_text())["class_names"]
        y_true = [names.index(r["label"]) for r in rows]
        probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
        panels: dict[str, Any] = {
            "test/confusion_matrix_plot": confusion_plot(y_true, probs.argmax(1).tolist(), names, "test"),
            "test/roc_curve": wandb.plot.roc_curve(y_true, probs.tolist(), labels=names, title="test ROC"),
            "test/pr_curve": wandb.plot.pr_curve(y_true, probs.tolist(), labels=names, title="test precision-recall"),
            "test/predictions": self._table(trainer, pl_module, rows, names),
        }
        test = json.loads(metrics.read_text())["test"]
        panels.update(report_tables(folder, test))
        self._log(logger, trainer, panels)
        logger.experiment.summary.update(summary_scores(test))

    # -- panels ------------------------------------------------------------------------------
    @staticmethod
    def _log(logger: WandbLogger, trainer: L.Trainer, panels: dict[str, Any]) -> None:
        logger.log_metrics(panels, step=trainer.global_step)

    @torch.no_grad()
    def _table(self, trainer: L.Trainer, pl_module: L.LightningModule, rows: list[dict], names: list[str]):
        import wandb

        data = evaluation_data(trainer)
        rows = rows[: self.max_table_rows]
        records = data.records("test") if data is not None else []
        position = {r.image_id: i for i, r in enumerate(records)}
        attention = isinstance(pl_module, DermModule) and isinstance(pl_module.net, AttentionNet) \
            and bool(pl_module.attention_names)
        columns = ["image_id", "image"] + (["attention"] if attention else []) + ["label", "prediction", "correct",
                                                                                  "group"] + [f"prob_{n}" for n in names]
        table = wandb.Table(columns=columns)
        was_training = pl_module.training
        pl_module.eval()
        for start in range(0, len(rows), 32):
            chunk = rows[start:start + 32]
            pictures, heat = [None] * len(chunk), [None] * len(chunk)
            indices = [position.get(r["image_id"]) for r in chunk]
            if data is not None and all(i is not None for i in indices):
                batch = data.eval_batch("test", indices)
                image = batch["image"].to(pl_module.device)
                description = data.describe()
                pictures = list(denormalise(image, description.normalize_mean, description.normalize_std))
                if attention:
                    maps = pl_module.net.forward_with_attention(image, batch["meta"].to(pl_module.device))[1]
                    first = maps[pl_module.net.attention_names[0]]
                    heat = list(overlay(np.stack(pictures), normalise(upsample(first.float(), image.shape[-2:])).cpu().numpy()))
            for row, picture, overlaid, index in zip(chunk, pictures, heat, indices):
                group = records[index].group if index is not None else ""
                cells = [row["image_id"], self._image(picture)] + ([self._image(overlaid)] if attention else [])
                cells += [row["label"], row["prediction"], row["label"] == row["prediction"], group]
                table.add_data(*cells, *[float(row[f"prob_{n}"]) for n in names])
        pl_module.train(was_training)
        return table

    def _image(self, picture: Optional[np.ndarray]):
        import wandb

        if picture is None:
            return None
        from PIL import Image

        thumbnail = Image.fromarray(picture)
        thumbnail.thumbnail((self.thumbnail_size, self.thumbnail_size))
        return wandb.Image(thumbnail)
