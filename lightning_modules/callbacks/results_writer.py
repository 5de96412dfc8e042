"""After testing: ``metrics.json`` (scores, per-class AUROC, confusion matrix, best checkpoint)
and ``predictions.csv`` (one row per test image with its class probabilities) in the run folder.

Outputs are gathered across processes and de-duplicated by dataset index (the distributed
sampler pads the last batch with repeats), and the scores in ``metrics.json`` are computed here
from those de-duplicated predictions, so DDP runs report exactly what one process would (the
per-step logged ``test/*`` values of a DDP run may count a padded repeat or two).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
import torch

from lightning_modules.callbacks.run_context import UsesRunContext
from lightning_modules.contracts import evaluation_data
from lightning_modules.metrics.classification import classification_scores
from lightning_modules.metrics.gather import gather_unique
from lightning_modules.utils.atomic_io import write_json
from lightning_modules.utils.predictions_csv import write_predictions


class ResultsWriter(UsesRunContext, L.Callback):
    def __init__(self, dirpath: Optional[str] = None):
        """``dirpath``: where the files go; default: the trainer's run folder (``default_root_dir``).
        ``metrics.json`` also names the experiment (the :class:`RunContext`'s name), the folder and
        the data the run was trained on (the datamodule's ``summary()``)."""
        self.dirpath = dirpath
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
        folder = Path(self.dirpath or trainer.default_root_dir)
        index, probs, labels = self._gathered["index"], self._gathered["probs"], self._gathered["label"]
        data = evaluation_data(trainer)
        records = data.records("test") if data is not None else None
        image_ids = [records[i].image_id for i in index] if records else [str(i) for i in index]
        write_predictions(folder / "predictions.csv", image_ids, probs, pl_module.class_names, labels)

        test = classification_scores(probs, labels, pl_module.class_names)
        for key, value in trainer.callback_metrics.items():  # loss, lesion mass, ... as logged
            name = key.split("/", 1)[1] if key.startswith("test/") else None
            if name and name not in test and not name.startswith("auroc_") and value.numel() == 1:
                test[name] = float(value) if torch.isfinite(value) else None  # JSON has no NaN (recall@8 of 8 images)
        checkpoint = trainer.checkpoint_callback
        summary = getattr(trainer.datamodule, "summary", None)
        metrics = {
            **({"experiment": self.run_context.name} if self.run_context.name is not None else {}),
            "run_dir": str(folder),
            **({"data": summary()} if callable(summary) else {}),
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
        write_json(folder / "metrics.json", metrics)
