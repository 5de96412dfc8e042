"""After testing: the run's results in its folder.

- ``predictions.csv``: one row per test image: class probabilities, label, patient/lesion
  ``group`` and the raw metadata fields used for subgroups (a file enough to evaluate again);
  ``val_predictions.csv`` the same for the validation split, scored by the tested model;
- ``metrics.json``: scores, per-class AUROC, confusion matrix, best checkpoint, and the
  evaluation report of ``lightning_modules.evaluation`` (intervals, calibration, operating points
  chosen on validation, challenge metrics; ``docs/evaluation.md``);
- ``subgroups.csv`` / ``subgroups.md`` and ``test_reliability.png``;
- with ``--calibrate=temperature``, the temperature fitted on the validation split is stored in
  the tested checkpoint (prediction then applies it).

Outputs are gathered across processes and de-duplicated by dataset index (the distributed
sampler pads the last batch with repeats), and the scores in ``metrics.json`` are computed here
from those de-duplicated predictions, so DDP runs report exactly what one process would (the
per-step logged ``test/*`` values of a DDP run may count a padded repeat or two). The validation
split is scored the same way: each process scores a share of it and the shares are gathered.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Subset

from lightning_modules.callbacks.run_context import UsesRunContext
from lightning_modules.contracts import PredictsClasses, ScoresBatches, evaluation_data
from lightning_modules.evaluation import evaluate
from lightning_modules.evaluation.files import write_report_files
from lightning_modules.metrics.classification import classification_scores
from lightning_modules.metrics.gather import gather_unique, shard_indices
from lightning_modules.modules.loading import write_calibration
from lightning_modules.utils.atomic_io import write_json
from lightning_modules.utils.image_logging import log_images
from lightning_modules.utils.predictions_csv import write_predictions


def validated_images(n_images: int, batch_size: int, limit: int | float) -> int:
    """How many images (from the first) the validation loop scores under ``limit_val_batches``:
    the report's validation split is the one the run validated (and picked its checkpoint) on."""
    batches = math.ceil(n_images / batch_size)
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    return min(n_images, batches * batch_size)


def metadata_columns(records) -> set[str]:
    return {key for record in records for key in record.meta}


class ResultsWriter(UsesRunContext, L.Callback):
    def __init__(self, dirpath: Optional[str] = None):
        """``dirpath``: where the files go; default: the trainer's run folder (``default_root_dir``).
        ``metrics.json`` also names the experiment (the :class:`RunContext`'s name), the folder and
        the data the run was trained on (the datamodule's ``summary()``). What the report covers
        is the run context's ``evaluation`` (the CLI's ``--eval.*`` and ``--calibrate``)."""
        self.dirpath = dirpath
        self._chunks: dict[str, list[torch.Tensor]] = {}
        self._gathered: Optional[dict[str, np.ndarray]] = None
        self._val: Optional[dict[str, np.ndarray]] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the ``--eval`` options against the classes and metadata before any training."""
        options = self.run_context.evaluation
        options.check_positive(pl_module.class_names)
        data = evaluation_data(trainer)
        if data is not None:
            options.fields(data.describe().dataset, metadata_columns(data.records("test")))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._chunks = {"index": [], "probs": [], "label": []}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for key in self._chunks:
            self._chunks[key].append(outputs[key].detach())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._gathered = gather_unique(pl_module, self._chunks)  # collective: every rank calls it
        self._chunks = {}
        self._val = self._score_validation(trainer, pl_module)  # collective too

    @torch.no_grad()
    def _score_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Optional[dict[str, np.ndarray]]:
        """The validation split scored by the tested model, as its test step scores (for the
        operating points and the temperature). Every process scores a share and the shares are
        gathered, as the test outputs are: the split may be large, and a collective keeps the
        processes in step."""
        data = evaluation_data(trainer)
        if data is None or not isinstance(pl_module, ScoresBatches):
            return None
        loader = data.eval_dataloader("val")
        count = validated_images(len(loader.dataset), loader.batch_size or 1, trainer.limit_val_batches)
        if count == 0:
            return None
        share = DataLoader(Subset(loader.dataset, shard_indices(count, trainer.world_size, trainer.global_rank)),
                           batch_size=loader.batch_size, num_workers=loader.num_workers,
                           collate_fn=loader.collate_fn)  # fmt: skip
        chunks: dict[str, list[torch.Tensor]] = {"index": [], "probs": [], "label": []}
        precision = trainer.precision_plugin
        for batch in share:
            batch = precision.convert_input(trainer.strategy.batch_to_device(batch))
            with precision.test_step_context():
                probs = pl_module.test_probabilities(batch)
            chunks["probs"].append(probs.float())
            chunks["index"].append(batch["index"])
            chunks["label"].append(batch["label"])
        return gather_unique(pl_module, chunks)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._gathered is None:
            return
        folder = Path(self.dirpath or trainer.default_root_dir)
        options = self.run_context.evaluation
        names = list(pl_module.class_names)
        index, probs, labels = self._gathered["index"], self._gathered["probs"], self._gathered["label"]
        data = evaluation_data(trainer)
        fields: list[str] = []
        groups = metadata = None
        if data is not None:
            records = data.records("test")
            fields = options.fields(data.describe().dataset, metadata_columns(records))
            image_ids = [records[i].image_id for i in index]
            groups = [records[i].group for i in index]
            metadata = {f: [records[i].meta.get(f) for i in index] for f in fields}
        else:
            image_ids = [str(i) for i in index]
        write_predictions(folder / "predictions.csv", image_ids, probs, names, labels, groups, metadata)
        val = None
        if self._val is not None and data is not None:
            val_records = data.records("val")
            val_index = self._val["index"]
            val = (self._val["label"], self._val["probs"])
            write_predictions(folder / "val_predictions.csv", [val_records[i].image_id for i in val_index],
                              self._val["probs"], names, self._val["label"], [val_records[i].group for i in val_index],
                              {f: [val_records[i].meta.get(f) for i in val_index] for f in fields})  # fmt: skip

        test = classification_scores(probs, labels, names)
        for key, value in trainer.callback_metrics.items():  # loss, lesion mass, ... as logged
            name = key.split("/", 1)[1] if key.startswith("test/") else None
            if name and name not in test and not name.startswith("auroc_") and value.numel() == 1:
                test[name] = float(value) if torch.isfinite(value) else None  # JSON has no NaN (recall@8 of 8 images)
        test["n_images"] = int(len(index))
        report = evaluate(labels, probs, names, groups, metadata, val=val, positive=options.positive,
                          subgroup_fields=fields, bands=options.bands(), n_boot=options.n_boot, seed=options.seed)
        report, picture = write_report_files(report, folder, "test_reliability.png", "test, top-label")
        log_images(trainer, "test/reliability", [picture])
        val_images = int(len(self._val["index"])) if self._val is not None else 0
        calibration = (self._calibrate(trainer, pl_module, report, val_images) if options.calibrate == "temperature"
                       else None)
        if calibration is not None:
            report["calibration"]["stored"] = calibration
        # The scores above keep their definitions (torchmetrics'); the report adds what they lack.
        test.update({key: value for key, value in report.items() if key not in test})
        checkpoint = trainer.checkpoint_callback
        summary = getattr(trainer.datamodule, "summary", None)
        metrics = {
            **({"experiment": self.run_context.name} if self.run_context.name is not None else {}),
            "run_dir": str(folder),
            **({"data": summary()} if callable(summary) else {}),
            "class_names": names,
            "parameters": int(sum(p.numel() for p in pl_module.parameters())),
            "test": test,
            "evaluation": {**options.as_dict(), "subgroups": fields, "val_images": val_images},
            "checkpoint": {
                "tested": str(getattr(trainer, "ckpt_path", None) or ""),
                "monitor": getattr(checkpoint, "monitor", None),
                "best_score": float(checkpoint.best_model_score) if getattr(checkpoint, "best_model_score", None) is not None else None,
                "best_path": getattr(checkpoint, "best_model_path", None),
            },
        }
        write_json(folder / "metrics.json", metrics)

    @staticmethod
    def _calibrate(trainer: L.Trainer, pl_module: L.LightningModule, report: dict[str, Any],
                   val_images: int) -> Optional[dict]:
        """Store the temperature the report fitted on the validation split in the tested checkpoint
        (the weights it was fitted for; ``last.ckpt`` holds other weights and stays as it is)."""
        fitted = report["calibration"].get("temperature_scaling")
        tested = getattr(trainer, "ckpt_path", None)
        problem = ("the validation split was not scored" if fitted is None
                   else "the test did not load a checkpoint file" if not tested or not Path(tested).is_file()
                   else f"{type(pl_module).__name__} does not predict classes by itself (prediction does not serve "
                        "it)" if not isinstance(pl_module, PredictsClasses) else None)  # fmt: skip
        if problem:
            rank_zero_warn(f"--calibrate=temperature: nothing stored: {problem}")
            return None
        calibration = {"temperature": fitted["temperature"], "fitted_on": "val",
                       "method": "temperature scaling (Guo et al. 2017): NLL of the validation split's "
                                 "log-probabilities minimised over T",
                       "val_images": val_images}
        write_calibration(tested, calibration)
        return {**calibration, "checkpoint": str(tested)}
