"""After testing: ``metrics.json`` (scores, per-class AUROC, confusion matrix, best checkpoint)
and ``predictions.csv`` (one row per test image with its class probabilities) in the run folder.

Outputs are gathered across processes and de-duplicated by dataset index (the distributed
sampler pads the last batch with repeats), and the scores in ``metrics.json`` are computed here
from those de-duplicated predictions, so DDP runs report exactly what one process would (the
per-step logged ``test/*`` values of a DDP run may count a padded repeat or two).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_recall,
)

from lightning_modules.contracts import evaluation_data
from lightning_modules.metrics.auroc import scorable_auroc
from lightning_modules.utils.atomic_io import atomic_write, write_json


def gather_unique_tensors(pl_module: L.LightningModule, chunks: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-batch tensors, gather them from every process and drop the repeats
    DistributedSampler pads with: one row per dataset ``index``, in index order. A collective
    under DDP: every rank must call it."""
    local = {k: torch.cat(v) if v else torch.empty(0) for k, v in chunks.items()}
    if pl_module.trainer.world_size > 1:
        local = {k: pl_module.all_gather(v).flatten(0, 1) for k, v in local.items()}
    index = local["index"]
    order = torch.argsort(index, stable=True)
    keep = torch.ones_like(order, dtype=torch.bool)
    keep[1:] = index[order][1:] != index[order][:-1]
    return {k: v.detach()[order[keep]] for k, v in local.items()}


def gather_unique(pl_module: L.LightningModule, chunks: dict[str, list[torch.Tensor]]) -> dict[str, np.ndarray]:
    """:func:`gather_unique_tensors` as numpy arrays."""
    return {k: v.cpu().numpy() for k, v in gather_unique_tensors(pl_module, chunks).items()}


def classification_scores(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Macro one-vs-rest AUROC, balanced accuracy (macro recall), accuracy, per-class AUROC and the
    confusion matrix (rows: true class) of one set of predictions."""
    preds, target, k = torch.as_tensor(probs).float(), torch.as_tensor(labels).long(), len(class_names)
    per_class, macro = scorable_auroc(preds, target, class_names)
    finite = lambda v: float(v) if torch.isfinite(v) else None  # noqa: E731 - JSON has no NaN
    return {
        "auroc": finite(macro),
        "auroc_classes_scored": int(torch.isfinite(per_class).sum()),
        "bacc": float(multiclass_recall(preds, target, k, average="macro")),
        "acc": float(multiclass_accuracy(preds, target, k, average="micro")),
        "auroc_per_class": {name: finite(v) for name, v in zip(class_names, per_class)},
        "confusion_matrix": multiclass_confusion_matrix(preds, target, k).tolist(),
    }


def write_predictions(path: str | Path, image_ids: Sequence[str], probs: np.ndarray,
                      class_names: Sequence[str], labels: Optional[Sequence[int]] = None) -> Path:
    def write(handle) -> None:
        writer = csv.writer(handle)
        header = ["image_id"] + (["label"] if labels is not None else []) + ["prediction"]
        writer.writerow(header + [f"prob_{name}" for name in class_names])
        for i, image_id in enumerate(image_ids):
            row = [image_id] + ([class_names[labels[i]]] if labels is not None else [])
            row.append(class_names[int(np.argmax(probs[i]))])
            writer.writerow(row + [f"{p:.6f}" for p in probs[i]])

    return atomic_write(path, write)


class TestResultsWriter(L.Callback):
    def __init__(self, run_dir: str, extra: Optional[dict[str, Any]] = None):
        self.run_dir = Path(run_dir)
        self.extra = dict(extra or {})
        self._chunks: dict[str, list[torch.Tensor]] = {}
        self._gathered: Optional[dict[str, np.ndarray]] = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._chunks = {"index": [], "probs": [], "label": []}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for key in self._chunks:
            self._chunks[key].append(outputs[key].detach())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._gathered = gather_unique(pl_module, self._chunks)  # collective: every rank calls it
        self._chunks = {}

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._gathered is None:
            return
        index, probs, labels = self._gathered["index"], self._gathered["probs"], self._gathered["label"]
        data = evaluation_data(trainer)
        records = data.records("test") if data is not None else None
        image_ids = [records[i].image_id for i in index] if records else [str(i) for i in index]
        write_predictions(self.run_dir / "predictions.csv", image_ids, probs, pl_module.class_names, labels)

        test = classification_scores(probs, labels, pl_module.class_names)
        for key, value in trainer.callback_metrics.items():  # loss, lesion mass, ... as logged
            name = key.split("/", 1)[1] if key.startswith("test/") else None
            if name and name not in test and not name.startswith("auroc_") and value.numel() == 1:
                test[name] = float(value) if torch.isfinite(value) else None  # JSON has no NaN (recall@8 of 8 images)
        checkpoint = trainer.checkpoint_callback
        metrics = {
            **self.extra,
            "class_names": list(pl_module.class_names),
            "parameters": int(sum(p.numel() for p in pl_module.parameters())),
            "test": {**test, "n_images": int(len(index))},
            "checkpoint": {
                "tested": str(getattr(trainer, "ckpt_path", None) or ""),
                "monitor": getattr(checkpoint, "monitor", None),
                "best_score": float(checkpoint.best_model_score) if getattr(checkpoint, "best_model_score", None) is not None else None,
                "best_path": getattr(checkpoint, "best_model_path", None),
            },
        }
        write_json(self.run_dir / "metrics.json", metrics)
