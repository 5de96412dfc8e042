"""When ProtoPNet pushes, and what a push looks like. ``ProtoPNetModule.configure_callbacks``
brings it, on the module's schedule (``push_start``, ``push_every``, ``push_at_end``).

It changes the model: on push epochs, after the epoch's last training batch (so the epoch's
validation and checkpoint see the pushed model), it hands every training image once,
un-augmented, to ``ProtoPNetModule.push_prototypes``, which moves the prototypes onto training
patches and refits the last layer. Then it records for every prototype its source image, patch
location, distance, receptive-field box and the box of the top 5 % of its upsampled activation,
in ``<run>/prototypes/epochNNN/prototypes.json``, with three pictures per prototype beside it and
a W&B panel.

The record is the callback's state, so it lives in checkpoints and a resumed run keeps it (the
analysis tools read it from there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

from lightning_modules.contracts import EvaluationData, evaluation_data
from lightning_modules.protopnet.pictures import activation_boxes, describe_push, prototype_pictures
from lightning_modules.utils.atomic_io import write_json, write_png
from lightning_modules.utils.image_logging import log_images
from lightning_modules.utils.images import denormalise
from lightning_modules.utils.progress import progress


class PrototypePush(L.Callback):
    def __init__(self, push_start: int = 10, push_every: int = 10, push_at_end: bool = True,
                 dirpath: Optional[str] = None, pictures: bool = True, activation_percentile: float = 95.0):
        """
        Args:
            push_start, push_every, push_at_end: the schedule, as ``ProtoPNetModule`` documents it.
            dirpath: where pictures and records go (``<dirpath>/prototypes/``); default: the
                trainer's run folder (``default_root_dir``).
        """
        self.push_start, self.push_every, self.push_at_end = push_start, push_every, push_at_end
        self.dirpath, self.pictures, self.activation_percentile = dirpath, pictures, activation_percentile
        self.records: list[dict[str, Any]] = []

    # -- when -----------------------------------------------------------------------------------
    def is_push_epoch(self, epoch: int, max_epochs: int) -> bool:
        count = epoch + 1
        scheduled = count >= self.push_start and (count - self.push_start) % self.push_every == 0
        return scheduled or (self.push_at_end and epoch == max_epochs - 1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        last = batch_idx == trainer.num_training_batches - 1
        if last and self.is_push_epoch(trainer.current_epoch, trainer.max_epochs):
            self.push(trainer, pl_module)

    def push(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = evaluation_data(trainer)
        if data is None:
            raise RuntimeError("PrototypePush needs the training images: fit with a LesionDataModule")
        outcome = pl_module.push_prototypes(self._loader(trainer, data))
        size = data.describe().image_size
        was_training = pl_module.training
        pl_module.eval()  # the receptive-field trace runs the backbone: no BatchNorm statistics may move
        described = describe_push(outcome.result, pl_module.net, data.records("train"), pl_module.class_names, size)
        pl_module.train(was_training)
        # The boxes come from the maps the push kept: no further forward pass.
        maps = activation_boxes(described, outcome.activation, (size, size), self.activation_percentile,
                                keep_maps=self.pictures)
        self.records = described
        if trainer.is_global_zero:
            self._save(trainer, data, outcome.epoch, maps)

    def _loader(self, trainer: L.Trainer, data: EvaluationData) -> DataLoader:
        """Every training image once, un-augmented; sharded across processes under DDP."""
        loader = data.eval_dataloader("train")
        if trainer.world_size > 1:
            sampler = DistributedSampler(loader.dataset, num_replicas=trainer.world_size,
                                         rank=trainer.global_rank, shuffle=False)
            loader = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                                num_workers=loader.num_workers)
        return loader

    # -- the record and the pictures ------------------------------------------------------------
    def _save(self, trainer: L.Trainer, data: EvaluationData, epoch: int, maps: dict[int, np.ndarray]) -> None:
        folder = Path(self.dirpath or trainer.default_root_dir) / "prototypes" / f"epoch{epoch:03d}"
        description = data.describe()
        panel, captions = [], []
        for entry in progress(trainer, self.records, "push 4/4: pictures" if self.pictures else "push 4/4: record"):
            activation = maps.get(entry["prototype"])
            if activation is None or not self.pictures:
                continue
            image = data.eval_batch("train", [entry["image_index"]])["image"]
            picture = denormalise(image, description.normalize_mean, description.normalize_std)[0]
            pictures = prototype_pictures(picture, activation, entry["receptive_field_box"], entry["activation_box"])
            for kind, array in pictures.items():
                write_png(folder / f"prototype{entry['prototype']:04d}_{kind}.png", array)
            panel.append(pictures["boxes"])
            captions.append(f"p{entry['prototype']} {entry['class']} <- {entry['image_id']} d={entry['distance']:.3f}")
        write_json(folder / "prototypes.json", {"epoch": epoch, "prototypes": self.records})
        if panel:
            log_images(trainer, "prototypes", panel, captions)

    # -- checkpoint state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict.get("records", []))
