"""Attention maps over a fixed, class-balanced set of validation images, every validation epoch:
upsampled to the image, colour-mapped, overlaid (with the lesion's outline in white when the data
loads masks), logged to W&B as an image panel (captioned with
label and prediction) and saved as one PNG grid per map under ``<run>/attention/``.

Works for any module whose network is an :class:`~lightning_modules.contracts.AttentionNet`;
captions show the prediction when the module :class:`~lightning_modules.contracts.PredictsClasses`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
import torch

from lightning_modules.contracts import AttentionNet, PredictsClasses, evaluation_data
from lightning_modules.modules.base import DermModule
from lightning_modules.utils.atomic_io import write_png
from lightning_modules.utils.image_logging import log_images
from lightning_modules.utils.images import denormalise, grid, normalise, outline, overlay, upsample


def balanced_indices(labels: list[int], per_class: int) -> list[int]:
    """The first ``per_class`` images of every class, in dataset order (fixed for the run)."""
    chosen: list[int] = []
    for k in sorted(set(labels)):
        chosen += [i for i, label in enumerate(labels) if label == k][:per_class]
    return chosen


class AttentionMapLogger(L.Callback):
    def __init__(self, dirpath: Optional[str] = None, per_class: int = 2, every_n_epochs: int = 1,
                 alpha: float = 0.5):
        """``dirpath``: where the PNG grids go (``<dirpath>/attention/``); default: the trainer's
        run folder (``default_root_dir``)."""
        self.dirpath = dirpath
        self.per_class = per_class
        self.every_n_epochs = every_n_epochs
        self.alpha = alpha
        self.indices: Optional[list[int]] = None

    @torch.no_grad()
    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, tuple[np.ndarray, list[str], list[np.ndarray]]]:
        """``{map name: (grid picture, captions, single pictures)}`` for the fixed images."""
        data = evaluation_data(trainer)
        if data is None:
            return {}
        if self.indices is None:
            self.indices = balanced_indices([r.label for r in data.records("val")], self.per_class)
        batch = data.eval_batch("val", self.indices)
        was_training = pl_module.training
        pl_module.eval()
        image = batch["image"].to(pl_module.device)
        meta = batch["meta"].to(pl_module.device)
        maps = pl_module.net.forward_with_attention(image, meta)[1]
        probs = pl_module.class_probabilities(image, meta) if isinstance(pl_module, PredictsClasses) else None
        pl_module.train(was_training)
        description = data.describe()
        pictures = denormalise(image, description.normalize_mean, description.normalize_std)
        names = list(description.class_names)
        captions = [
            f"{names[int(y)]} -> {names[int(p.argmax())]} ({float(p.max()):.2f})" if p is not None else names[int(y)]
            for y, p in zip(batch["label"], probs if probs is not None else [None] * len(batch["label"]))
        ]
        out = {}
        for name, attention in maps.items():
            heat = normalise(upsample(attention.float(), image.shape[-2:])).cpu().numpy()
            overlays = overlay(pictures, heat, self.alpha)
            if "mask" in batch:  # data with lesion masks (--data.load_masks=true): the lesion's outline
                overlays = outline(overlays, batch["mask"].cpu().numpy())
            singles = list(overlays)
            out[name] = (grid(singles, columns=2 * self.per_class), captions, singles)
        return out

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not (isinstance(pl_module, DermModule) and isinstance(pl_module.net, AttentionNet) and pl_module.attention_names):
            return  # a network without attention gets no panel
        if trainer.current_epoch % self.every_n_epochs:
            return
        folder = Path(self.dirpath or trainer.default_root_dir) / "attention"
        for name, (picture, captions, singles) in self.render(trainer, pl_module).items():
            log_images(trainer, f"attention/{name}", singles, captions)
            write_png(folder / f"epoch{trainer.current_epoch:03d}_{name}.png", picture)
