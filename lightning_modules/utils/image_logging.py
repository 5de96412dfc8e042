"""Send pictures to every logger that can show them (W&B today; CSV cannot)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger


def log_images(trainer: Trainer, key: str, images: Sequence[np.ndarray],
               captions: Optional[Sequence[str]] = None) -> None:
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            extra = {"caption": list(captions)} if captions else {}
            logger.log_image(key=key, images=list(images), step=trainer.global_step, **extra)
