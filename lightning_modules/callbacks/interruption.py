"""An interrupted run can be resumed: on Ctrl-C, SIGTERM (what SLURM and cloud schedulers send
before preempting) or a crash, the current state is saved as ``<run>/checkpoints/interrupted.ckpt``
and one line says how to resume from it.

Lightning turns SIGTERM into a ``SIGTERMException`` at the next batch boundary and Ctrl-C into a
graceful shutdown; both reach ``on_exception`` here, as any other error does. A SIGKILL cannot be
caught: then the ``last.ckpt`` of the last finished epoch is what remains.

Validation is the exception. Lightning cannot resume inside the validation that ends an epoch:
the metric states of the batches already validated are not in a checkpoint, and a resumed run
skips the rest of that validation and fails in ``EarlyStopping`` for want of its metric (seen with
Lightning 2.6). So a SIGTERM or a first Ctrl-C that arrives while an epoch is being validated is
held until the validation has finished, and the run stops as that epoch ends, with its metrics
and ``last.ckpt`` written; the checkpoint then resumes with the next epoch. A second Ctrl-C, or an
error, inside validation stops at once: no ``interrupted.ckpt`` is written then (it could not be
resumed correctly) and the message points at ``last.ckpt``, which loses that one epoch.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from lightning_modules.callbacks.run_context import UsesRunContext


class ResumableInterruption(UsesRunContext, OnExceptionCheckpoint):
    def __init__(self, dirpath: Optional[str] = None, resume_command: Optional[str] = None):
        """``dirpath``: where ``interrupted.ckpt`` goes; default: ``checkpoints/`` in the
        :class:`RunContext`'s run folder (or the working directory). ``resume_command``: how to
        resume, with ``{ckpt}`` for the checkpoint's path; default: the :class:`RunContext`'s."""
        super().__init__(dirpath=dirpath, filename="interrupted")
        self._resume_command = resume_command
        self.stopped_by: str | None = None  # "SIGTERM" or "Ctrl-C" once a held signal stops the run
        self._held: list[str] = []
        self._handlers: dict[int, object] = {}

    @property
    def resume_command(self) -> str:
        return self._resume_command or self.run_context.resume_command

    @property
    def ckpt_path(self) -> str:
        # Lightning reads it as `fit` starts, before any hook could show the trainer's folder.
        folder = self.dirpath or os.path.join(self.run_context.dir or os.getcwd(), "checkpoints")
        return os.path.join(folder, self.filename + self.FILE_EXTENSION)

    # -- signals held through an epoch's validation -------------------------------------------

    @property
    def holding(self) -> bool:
        """Whether a signal is being held until the running validation has finished."""
        return bool(self._held)

    @staticmethod
    def _validating_an_epoch(trainer: L.Trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING and trainer.validating and not trainer.sanity_checking

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._validating_an_epoch(trainer):
            return
        connector = trainer._signal_connector
        if connector.received_sigterm:  # arrived with the epoch's last training batch
            connector.received_sigterm = False  # Lightning would act on it inside validation
            self._held.append("SIGTERM")
        self._handlers = {signal.SIGTERM: signal.getsignal(signal.SIGTERM),
                          signal.SIGINT: signal.getsignal(signal.SIGINT)}  # fmt: skip
        signal.signal(signal.SIGTERM, self._hold)
        signal.signal(signal.SIGINT, self._hold)

    def _hold(self, signum: int, frame) -> None:
        if signum == signal.SIGINT:
            if "Ctrl-C" in self._held:
                raise KeyboardInterrupt  # the second one: stop now
            print("\nCtrl-C: stopping once this epoch's validation has finished (press again to stop now, "
                  "losing the epoch)", file=sys.stderr, flush=True)  # fmt: skip
        self._held.append("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._handlers:
            return
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}
        if self._held:
            # Raise Lightning's own flag: it stops the run once the epoch has ended, as a SIGTERM
            # that arrives then would (through its handler, which also tells DDP's other ranks).
            self.stopped_by = "Ctrl-C" if "Ctrl-C" in self._held else "SIGTERM"
            self._held = []
            handler = signal.getsignal(signal.SIGTERM)
            if callable(handler):
                handler(signal.SIGTERM, None)
            trainer._signal_connector.received_sigterm = True

    # -- the checkpoint and the message ---------------------------------------------------------

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        what = "SIGTERM" if type(exception).__name__ == "SIGTERMException" else type(exception).__name__
        what = self.stopped_by or what
        if trainer.state.fn == TrainerFn.FITTING and trainer.validating:
            for signum, handler in self._handlers.items():
                signal.signal(signum, handler)
            self._handlers = {}
            if trainer.is_global_zero:
                last = Path(self.ckpt_path).parent / "last.ckpt"
                hint = (f"resume from the previous epoch's end with: {self.resume_command.format(ckpt=last)}"
                        if last.exists() else "nothing to resume from: start the run again")  # fmt: skip
                print(f"\ninterrupted ({what}) during validation, which cannot be resumed; {hint}",
                      file=sys.stderr, flush=True)  # fmt: skip
            return
        super().on_exception(trainer, pl_module, exception)
        if trainer.is_global_zero:
            print(f"\ninterrupted ({what}); resume with: {self.resume_command.format(ckpt=self.ckpt_path)}",
                  file=sys.stderr, flush=True)
