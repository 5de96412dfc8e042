"""An interrupted run can be resumed: on Ctrl-C, SIGTERM (what SLURM and cloud schedulers send
before preempting) or a crash, the current state is saved as ``<run>/checkpoints/interrupted.ckpt``
and one line says how to resume from it.

Lightning turns SIGTERM into a ``SIGTERMException`` at the next batch boundary and Ctrl-C into a
graceful shutdown; both reach ``on_exception`` here, as any other error does. A SIGKILL cannot be
caught: then the ``last.ckpt`` of the last finished epoch is what remains.
"""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.callbacks import OnExceptionCheckpoint


class ResumableInterruption(OnExceptionCheckpoint):
    def __init__(self, dirpath: str, resume_command: str = "python -m experiments.train --resume {ckpt}"):
        """``resume_command``: how to resume, with ``{ckpt}`` for the checkpoint's path."""
        super().__init__(dirpath=dirpath, filename="interrupted")
        self.resume_command = resume_command

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if trainer.is_global_zero:
            what = "SIGTERM" if type(exception).__name__ == "SIGTERMException" else type(exception).__name__
            print(f"\ninterrupted ({what}); resume with: {self.resume_command.format(ckpt=self.ckpt_path)}",
                  file=sys.stderr, flush=True)
