"""Attention maps over a fixed, class-balanced set of validation images, every validation epoch:
upsampled to the image, colour-mapped, overlaid, logged to W&B as an image panel (captioned with
label and prediction) and saved as one PNG grid per map under ``<run>/attention/``.

Works for any module that implements ``attention_maps`` (see :mod:`lightning_modules.attention`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from lightning_modules.atomic_io import write_png  # noqa: E402
from lightning_modules.attention import ExposesAttention, normalise, upsample  # noqa: E402
from lightning_modules.callbacks.image_logging import log_images  # noqa: E402


def overlay(images: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """RGB uint8 images (B, H, W, 3) with [0, 1] heat maps (B, H, W) blended on top."""
    colours = colormaps[cmap](heat)[..., :3]
    return (255 * ((1 - alpha) * images / 255.0 + alpha * colours)).clip(0, 255).astype(np.uint8)


def denormalise(images: torch.Tensor, mean, std) -> np.ndarray:
    """(B, 3, H, W) normalised tensors -> (B, H, W, 3) uint8 pictures."""
    mean = torch.tensor(mean, device=images.device)[:, None, None]
    std = torch.tensor(std, device=images.device)[:, None, None]
    pixels = (images * std + mean).clamp(0, 1) * 255
    return pixels.permute(0, 2, 3, 1).round().byte().cpu().numpy()


def grid(pictures: list[np.ndarray], columns: int) -> np.ndarray:
    h, w = pictures[0].shape[:2]
    rows = (len(pictures) + columns - 1) // columns
    out = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
    for k, picture in enumerate(pictures):
        r, c = divmod(k, columns)
        out[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = picture
    return out


def balanced_indices(labels: list[int], per_class: int) -> list[int]:
    """The first ``per_class`` images of every class, in dataset order (fixed for the run)."""
    chosen: list[int] = []
    for k in sorted(set(labels)):
        chosen += [i for i, label in enumerate(labels) if label == k][:per_class]
    return chosen


class AttentionMapLogger(L.Callback):
    def __init__(self, dirpath: Optional[str] = None, per_class: int = 2, every_n_epochs: int = 1,
                 alpha: float = 0.5):
        self.dirpath = dirpath
        self.per_class = per_class
        self.every_n_epochs = every_n_epochs
        self.alpha = alpha
        self.indices: Optional[list[int]] = None

    def _batch(self, trainer: L.Trainer) -> Optional[dict]:
        dataset = getattr(trainer.datamodule, "datasets", {}).get("val") if trainer.datamodule else None
        if dataset is None:
            return None
        if self.indices is None:
            self.indices = balanced_indices([r.label for r in dataset.records], self.per_class)
        return default_collate([dataset[i] for i in self.indices])

    @torch.no_grad()
    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, tuple[np.ndarray, list[str], list[np.ndarray]]]:
        """``{map name: (grid picture, captions, single pictures)}`` for the fixed images."""
        batch = self._batch(trainer)
        if batch is None:
            return {}
        was_training = pl_module.training
        pl_module.eval()
        image = batch["image"].to(pl_module.device)
        meta = batch["meta"].to(pl_module.device)
        maps = pl_module.attention_maps(image, meta)
        probs = pl_module.class_probabilities(image, meta) if hasattr(pl_module, "class_probabilities") else None
        pl_module.train(was_training)
        hp = trainer.datamodule.hparams
        pictures = denormalise(image, hp.normalize_mean, hp.normalize_std)
        names = pl_module.class_names
        captions = [
            f"{names[int(y)]} -> {names[int(p.argmax())]} ({float(p.max()):.2f})" if p is not None else names[int(y)]
            for y, p in zip(batch["label"], probs if probs is not None else [None] * len(batch["label"]))
        ]
        out = {}
        for name, attention in maps.items():
            heat = normalise(upsample(attention.float(), image.shape[-2:])).cpu().numpy()
            singles = list(overlay(pictures, heat, self.alpha))
            out[name] = (grid(singles, columns=2 * self.per_class), captions, singles)
        return out

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not isinstance(pl_module, ExposesAttention):
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        for name, (picture, captions, singles) in self.render(trainer, pl_module).items():
            log_images(trainer, f"attention/{name}", singles, captions)
            if self.dirpath:
                write_png(Path(self.dirpath) / "attention" / f"epoch{trainer.current_epoch:03d}_{name}.png", picture)
