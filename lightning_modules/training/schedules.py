"""Learning-rate schedules that need the run length, which only the Trainer knows."""

from __future__ import annotations

import math
from typing import Optional

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine(LambdaLR):
    """Linear warm-up for ``warmup_epochs`` then cosine decay to ``min_factor`` of the base rate
    (the ISIC 2020 winners' schedule), stepped per epoch: the first epoch after warm-up trains at
    the full rate and the run's last epoch (``total - 1``) at exactly ``min_factor`` (a decay of a
    single epoch has no room to fall and stays at the full rate).

    ``total_epochs=None`` follows ``trainer.max_epochs``: the module sets ``run_epochs`` in
    ``configure_optimizers``, and it is left out of the scheduler's state, so a run resumed with a
    larger ``--trainer.max_epochs`` stretches its schedule instead of staying at the floor.
    """

    def __init__(self, optimizer: Optimizer, warmup_epochs: int = 1, total_epochs: Optional[int] = None,
                 min_factor: float = 0.01):
        self.warmup_epochs = warmup_epochs
        self.total_epochs = total_epochs
        self.run_epochs: Optional[int] = None
        self.min_factor = min_factor
        super().__init__(optimizer, self.factor)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("run_epochs", None)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        run_epochs = self.run_epochs
        super().load_state_dict(state_dict)
        self.run_epochs = run_epochs

    def factor(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        total = max(self.total_epochs or self.run_epochs or 1, self.warmup_epochs + 1)
        progress = min(1.0, (epoch - self.warmup_epochs) / max(1, total - 1 - self.warmup_epochs))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
