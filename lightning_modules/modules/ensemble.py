"""Test-time augmentation and ensembles of checkpoints, for prediction.

- TTA: the class probabilities averaged over the dihedral views of each image (the 8 flips and
  transposes the ISIC challenge winners used; 2 = identity + horizontal flip, 4 = the flips).
  Skin lesions have no "up", so every view is as valid as the original.
- Ensemble: the (TTA-averaged) probabilities of several modules averaged by image, e.g. the
  folds of a cross-validation. Each member reads the images and metadata as it was trained to
  (its own transform and fitted encoder); members must agree on the classes and the metadata
  features, or their probabilities would not mean the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import numpy as np
import torch

from datamodules.checkpoint_data import build_datamodule, datamodule_state, trained_encoder
from datamodules.records import LesionRecord
from lightning_modules.contracts import PredictsClasses

TTA_VIEWS = (1, 2, 4, 8)


def dihedral_views(images: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The first ``n`` of: identity, h-flip, v-flip, both (180 degrees), and the same four of the
    transposed image (90 and 270 degree rotations, the two diagonal mirrors). ``images``: (B, C, H, W)."""
    if n not in TTA_VIEWS:
        raise ValueError(f"TTA takes {TTA_VIEWS} views, got {n}")
    flips = [images, images.flip(-1), images.flip(-2), images.flip(-2, -1)]
    if n <= 4:
        return flips[:n]
    transposed = images.transpose(-2, -1)
    return flips + [transposed, transposed.flip(-1), transposed.flip(-2), transposed.flip(-2, -1)]


class TTAPredictor(L.LightningModule):
    """``predict_step`` gives, per image, a module's class probabilities averaged over ``tta``
    dihedral views."""

    def __init__(self, module: PredictsClasses, tta: int = 1):
        super().__init__()
        dihedral_views(torch.zeros(1, 1, 1, 1), tta)  # validates tta
        self.module = module
        self.tta = tta
        self.class_names = list(module.class_names)

    @torch.no_grad()
    def class_probabilities(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        views = [self.module.class_probabilities(view, meta).float() for view in dihedral_views(image, self.tta)]
        return torch.stack(views).mean(dim=0)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"probs": self.class_probabilities(batch["image"], batch["meta"]), "index": batch["index"]}


def average_probabilities(members: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``(index, mean probabilities)`` of several members' ``(index, probabilities)``, aligned by
    image index (every member must have predicted the same images)."""
    index = np.sort(members[0][0])
    total = np.zeros((len(index), members[0][1].shape[1]), dtype=np.float64)
    for member_index, probs in members:
        order = np.argsort(member_index)
        if not np.array_equal(member_index[order], index):
            raise ValueError("ensemble members predicted different images")
        total += probs[order]
    return index, (total / len(members)).astype(np.float32)


def check_ensemble(paths: Sequence[Path], checkpoints: Sequence[dict]) -> None:
    """Refuse checkpoints whose probabilities would not mean the same thing averaged together:
    other classes, or other metadata features (each member encodes with its own fitted encoder,
    so folds trained on different splits combine)."""
    def identity(checkpoint: dict) -> tuple[list, list]:
        data = datamodule_state(checkpoint)
        return list(data["class_names"]), list(data["feature_names"])

    classes, features = identity(checkpoints[0])
    for path, checkpoint in zip(paths[1:], checkpoints[1:]):
        other_classes, other_features = identity(checkpoint)
        if other_classes != classes:
            raise ValueError(f"cannot average {paths[0]} and {path}: they predict other classes "
                             f"({classes} vs {other_classes})")
        if other_features != features:
            raise ValueError(f"cannot average {paths[0]} and {path}: their metadata encoders differ "
                             f"({len(features)} features vs {len(other_features)}; "
                             f"only in one: {sorted(set(features) ^ set(other_features))[:6]})")


def member_probabilities(trainer: L.Trainer, checkpoint: dict, module: PredictsClasses, records: list[LesionRecord],
                         source: str, tta: int = 1, batch_size: Optional[int] = None,
                         num_workers: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(index, probabilities)`` of one member on ``records`` of dataset ``source``, each image read
    as the member was trained to: its own evaluation transform and its own fitted metadata encoder."""
    member_data = build_datamodule(checkpoint, None, None, "all", batch_size, num_workers, load_state=False)
    loader = member_data.records_dataloader(records, trained_encoder(checkpoint), source)
    outputs = trainer.predict(TTAPredictor(module, tta) if tta > 1 else module, dataloaders=loader)
    return torch.cat([o["index"] for o in outputs]).numpy(), torch.cat([o["probs"] for o in outputs]).numpy()
