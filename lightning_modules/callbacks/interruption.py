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
and ``last.ckpt`` written; the checkpoint then resumes with the next epoch.

The sanity check (the few validation batches before training) is held in the same way, for the
same reason: a checkpoint written inside it would hold a half-run validation. The run stops
right after it, before the first training batch, and writes ``interrupted.ckpt`` as any other
interruption does: resuming from it is the run that was never interrupted (a scheduler that
resumes whatever ``interrupted.ckpt`` a preempted job left needs no special case for a job
preempted as it started). The exit code is that of any interruption.

A second Ctrl-C, or an error, inside validation or the sanity check stops at once: no
``interrupted.ckpt`` is written then (it could not be resumed correctly) and the message points
at ``last.ckpt``, which loses that one epoch, or says to start again when there is none.

Errors that a resume cannot cross get no checkpoint and no resume command: a run that failed
before its first training step (bad data, a bad option: the entry point removes its new run
folder), and a diverged run (:class:`~lightning_modules.errors.NonFiniteError`: the resumed run
would diverge again). A full disk gets no ``interrupted.ckpt`` (it would not fit) but the
command that resumes from ``last.ckpt`` once there is space. An error in the test after training
gets no checkpoint either (``last.ckpt`` and the best one stand): resuming from ``last.ckpt``
only runs the test again. The resume command of an error is
attached to it (:func:`~lightning_modules.errors.advise`) for the entry point to print after the
error's own line; an interruption by a signal prints it here.

It is a plain :class:`~lightning.pytorch.callbacks.Checkpoint`, not Lightning's
``OnExceptionCheckpoint``: Lightning turns ``fit(ckpt_path=None)`` into ``ckpt_path="last"`` when
an ``OnExceptionCheckpoint`` is present, so a fresh run would look for a checkpoint to resume
from (and warn twice that it found none); a run here resumes only from the ``--resume`` it is given.

What this callback changes besides writing a checkpoint: it replaces the SIGTERM and SIGINT
handlers while it holds signals, and it stops the run (through Lightning's SIGTERM flag after an
epoch's validation; by raising ``SIGTERMException`` after the sanity check).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from datamodules.atomic_files import out_of_space
from lightning_modules.callbacks.run_context import UsesRunContext
from lightning_modules.errors import NonFiniteError, advise
from lightning_modules.lightning_compat import set_received_sigterm


class ResumableInterruption(UsesRunContext, Checkpoint):
    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: Optional[str] = None, resume_command: Optional[str] = None):
        """``dirpath``: where ``interrupted.ckpt`` goes; default: ``checkpoints/`` in the
        :class:`RunContext`'s run folder (or the working directory). ``resume_command``: how to
        resume, with ``{ckpt}`` for the checkpoint's path; default: the :class:`RunContext`'s."""
        super().__init__()
        self.dirpath, self.filename = dirpath, "interrupted"
        self._resume_command = resume_command
        self.stopped_by: str | None = None  # "SIGTERM" or "Ctrl-C" once a held signal stops the run
        self._held: list[str] = []
        self._ctrl_c_message = ""  # what the held signals wait for, and what stopping at once loses
        self._handlers: dict[int, object] = {}
        self._held_through_sanity_check: list[str] | None = None  # decided on in on_train_start

    @property
    def resume_command(self) -> str:
        return self._resume_command or self.run_context.resume_command

    @property
    def ckpt_path(self) -> str:
        folder = self.dirpath or os.path.join(self.run_context.dir or os.getcwd(), "checkpoints")
        return os.path.join(folder, self.filename + self.FILE_EXTENSION)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A run that went on to finish no longer needs its interrupted state (as OnExceptionCheckpoint does).
        trainer.strategy.remove_checkpoint(self.ckpt_path)

    # -- signals held through an epoch's validation and through the sanity check ----------------

    @property
    def holding(self) -> bool:
        """Whether a signal is being held until the running validation or sanity check has finished."""
        return bool(self._held)

    @staticmethod
    def _validating_an_epoch(trainer: L.Trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING and trainer.validating and not trainer.sanity_checking

    def _hold_signals(self, trainer: L.Trainer, until: str, losing: str = "") -> None:
        if trainer.received_sigterm:  # arrived just before (with the epoch's last training batch, or in setup)
            set_received_sigterm(trainer, False)  # Lightning would act on it inside validation
            self._held.append("SIGTERM")
        self._ctrl_c_message = f"Ctrl-C: stopping once {until} has finished (press again to stop now{losing})"
        self._handlers = {signal.SIGTERM: signal.getsignal(signal.SIGTERM),
                          signal.SIGINT: signal.getsignal(signal.SIGINT)}  # fmt: skip
        signal.signal(signal.SIGTERM, self._hold)
        signal.signal(signal.SIGINT, self._hold)

    def _hold(self, signum: int, frame) -> None:
        if signum == signal.SIGINT:
            if "Ctrl-C" in self._held:
                raise KeyboardInterrupt  # the second one: stop now
            print(f"\n{self._ctrl_c_message}", file=sys.stderr, flush=True)
        self._held.append("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")

    def _release_signals(self) -> list[str]:
        """Put the handlers back; return the signals held meanwhile."""
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}
        held, self._held = self._held, []
        return held

    @staticmethod
    def _stopper(held: list[str]) -> str:
        return "Ctrl-C" if "Ctrl-C" in held else "SIGTERM"

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._hold_signals(trainer, "the sanity check")

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handlers:
            # Lightning resets its validation progress after this hook: the run stops later, in
            # on_train_start, where a checkpoint holds no trace of the sanity check.
            self._held_through_sanity_check = self._release_signals()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        held, self._held_through_sanity_check = self._held_through_sanity_check, None
        if held is None:  # no sanity check ran (on every rank alike)
            return
        # Every rank decides together: one that stopped alone would leave the others waiting.
        if trainer.strategy.reduce_boolean_decision(bool(held), all=False):
            self.stopped_by = self._stopper(held)
            raise SIGTERMException

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validating_an_epoch(trainer):
            self._hold_signals(trainer, "this epoch's validation", losing=", losing the epoch")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._handlers or not self._validating_an_epoch(trainer):
            return
        held = self._release_signals()
        if held:
            # Raise Lightning's own flag: it stops the run once the epoch has ended, as a SIGTERM
            # that arrives then would (through its handler, which also tells DDP's other ranks).
            self.stopped_by = self._stopper(held)
            handler = signal.getsignal(signal.SIGTERM)
            if callable(handler):
                handler(signal.SIGTERM, None)
            set_received_sigterm(trainer, True)

    # -- the checkpoint and the message ---------------------------------------------------------

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        signalled = self.stopped_by is not None or isinstance(exception, (SIGTERMException, KeyboardInterrupt))
        what = "SIGTERM" if isinstance(exception, SIGTERMException) else type(exception).__name__
        what = self.stopped_by or what
        last = Path(self.ckpt_path).parent / "last.ckpt"
        from_last = (f"resume from the previous epoch's end with: {self.resume_command.format(ckpt=last)}"
                     if last.exists() else "")  # fmt: skip
        if not signalled and not self._resumable(trainer, exception):
            self._release_signals()
            if trainer.is_global_zero and not isinstance(exception, NonFiniteError):
                space = "free some space, then " if out_of_space(exception) else ""
                if trainer.state.fn == TrainerFn.TESTING and last.exists():
                    advise(exception, f"{space}test again with: {self.resume_command.format(ckpt=last)} "
                                      "(training is over: the resumed run only tests)")
                elif space:
                    advise(exception, space + from_last if from_last else "free some space and start the run again")
            return
        if trainer.state.fn == TrainerFn.FITTING and (trainer.validating or trainer.sanity_checking):
            self._release_signals()
            if trainer.is_global_zero:
                hint = from_last or "nothing to resume from: start the run again"
                if signalled:
                    during = "the sanity check" if trainer.sanity_checking else "validation"
                    print(f"\ninterrupted ({what}) during {during}, which cannot be resumed; {hint}",
                          file=sys.stderr, flush=True)  # fmt: skip
                else:
                    advise(exception, f"the error came during validation, which cannot be resumed; {hint}")
            return
        try:
            trainer.save_checkpoint(self.ckpt_path)
            hint = f"resume with: {self.resume_command.format(ckpt=self.ckpt_path)}"
        except Exception as err:  # noqa: BLE001 - the original error is the one to report
            hint = f"could not save {self.ckpt_path} ({err}); " + (from_last or "start the run again")
        if not trainer.is_global_zero:
            return
        if signalled:
            print(f"\ninterrupted ({what}); {hint}", file=sys.stderr, flush=True)
        else:
            advise(exception, hint)

    @staticmethod
    def _resumable(trainer: L.Trainer, exception: BaseException) -> bool:
        """Whether an error (not a signal) leaves a state worth resuming from: not before the first
        training step of a new run, not a diverged run, not a full disk, not in a test."""
        if isinstance(exception, NonFiniteError) or out_of_space(exception):
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return False  # training is over: its last.ckpt and best checkpoint stand
        return trainer.global_step > 0 or trainer.ckpt_path is not None
