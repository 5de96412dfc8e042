"""Test helper: a callback that stops a real training process at a chosen step and waits for the
test to send it a signal (so the signal arrives mid-epoch, at a known place)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class PauseAtStep(L.Callback):
    def __init__(self, step: int, marker: str, timeout: float = 120.0):
        self.step, self.marker, self.timeout = step, marker, timeout

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or trainer.ckpt_path is not None:  # not again once resumed
            return
        Path(self.marker).write_text(f"{trainer.current_epoch} {batch_idx}")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and not trainer.received_sigterm:
            time.sleep(0.05)  # Ctrl-C raises KeyboardInterrupt in here; SIGTERM sets the flag
