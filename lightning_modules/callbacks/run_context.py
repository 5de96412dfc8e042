"""The one thing an entry point hands to the callbacks: what the trainer cannot tell them.

A callback takes what it needs from the trainer when it runs: the run folder is
``trainer.default_root_dir``, the data ``trainer.datamodule``, the model ``pl_module``. What is
left is the run's name (written into ``metrics.json``), how the user resumes it (printed when a
run is interrupted), the run folder (where ``ResumableInterruption`` writes when no trainer
folder is set), and the ``--eval.*`` / ``--calibrate`` options of the test report. A callback that uses them
inherits :class:`UsesRunContext`; the CLI (``experiments/cli.py``) sets ``run_context`` on every
such callback before training. Used without the CLI, such a callback keeps the defaults below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lightning_modules.evaluation.options import EvaluationOptions


@dataclass(frozen=True)
class RunContext:
    name: Optional[str] = None  # the experiment (``run.name``)
    dir: Optional[str] = None  # the run folder (the trainer's ``default_root_dir``)
    resume_command: str = "python -m experiments.train --resume {ckpt}"  # ``{ckpt}``: the checkpoint's path
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)  # the test report's options


class UsesRunContext:
    """Mixin of callbacks that read :class:`RunContext`; the CLI sets :attr:`run_context`."""

    run_context: RunContext = RunContext()
