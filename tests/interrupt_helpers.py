"""Test helper: a callback that stops a real training process at a chosen step and waits for the
test to send it a signal (so the signal arrives at a known place: mid-epoch, or at an epoch's end)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from lightning_modules.callbacks.interruption import ResumableInterruption

HOOKS = ("train_batch_end", "validation_batch_end", "validation_end", "train_epoch_end", "sanity_check")


class PauseAtStep(L.Callback):
    def __init__(self, step: int, marker: str, timeout: float = 120.0, hook: str = "train_batch_end",
                 until_held: bool = True):
        """Pause once ``global_step`` is ``step``, in ``hook``: after that training batch, in the
        first validation batch that follows it, after that validation, at that epoch's end, or
        (``sanity_check``, step 0) in the sanity check's first batch.
        The pause ends with a SIGTERM, a Ctrl-C, or (``until_held``) a signal that the run holds
        until its validation has finished."""
        assert hook in HOOKS, hook
        self.step, self.marker, self.timeout, self.hook, self.until_held = step, marker, timeout, hook, until_held

    def _pause(self, trainer: L.Trainer, where: str, batch_idx: int) -> None:
        in_sanity_check = where == "sanity_check"
        if (where != self.hook or trainer.sanity_checking != in_sanity_check or trainer.global_step != self.step
                or trainer.ckpt_path is not None or Path(self.marker).exists()):  # once, and not once resumed
            return
        Path(self.marker).write_text(f"{trainer.current_epoch} {batch_idx}")
        deadline = time.monotonic() + self.timeout
        held = [c for c in trainer.callbacks if isinstance(c, ResumableInterruption) and self.until_held]
        while time.monotonic() < deadline and not trainer.received_sigterm and not any(c.holding for c in held):
            time.sleep(0.05)  # Ctrl-C raises KeyboardInterrupt in here; SIGTERM sets the flag

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._pause(trainer, "train_batch_end", batch_idx)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._pause(trainer, "sanity_check" if trainer.sanity_checking else "validation_batch_end", batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        self._pause(trainer, "validation_end", -1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._pause(trainer, "train_epoch_end", -1)

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.hook == "sanity_check" and Path(self.marker).exists():  # paused in it, and it still finished
            Path(f"{self.marker}.sanity-check-ended").touch()
