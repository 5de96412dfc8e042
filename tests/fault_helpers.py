"""Test helpers: callbacks that inject a fault into a real training run at a chosen step."""

from __future__ import annotations

import lightning as L
import torch


class FailAtStep(L.Callback):
    """Raise a RuntimeError (a crash: a bug, a lost device) before training step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected crash at step {self.step}")


class PoisonAtStep(L.Callback):
    """Set one weight of the network to NaN before training step ``step``: that step's loss is NaN,
    as a diverging run's would be."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(p for p in pl_module.net.parameters() if p.requires_grad).view(-1)[0] = float("nan")
