"""What models and callbacks may know about the data: one small frozen record, given by
``LesionDataModule.describe()``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataDescription:
    dataset: str
    class_names: tuple[str, ...]
    image_size: int
    normalize_mean: tuple[float, ...]
    normalize_std: tuple[float, ...]
    has_masks: bool  # batches carry lesion masks (load_masks is on and every record has one)
