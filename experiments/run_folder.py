"""Where a run's files go, and how every process of a run agrees on it.

- ``--resume <run>/checkpoints/last.ckpt``: that run's folder;
- a worker process started by Lightning's DDP launcher: rank 0's folder, handed over in the
  environment (:data:`RUN_DIR_ENV`), since the workers re-run the command line;
- ``--run.dir``: exactly that folder (for launchers that start every node separately), which
  must not already hold a run;
- ranks started by ``torchrun`` or SLURM: ``<root>/<name>/job-<job id>-s<seed>``, the job id
  being the one thing they share;
- otherwise a new ``<root>/<name>/<date>-<time>-s<seed>`` (``-2``, ``-3``, ... if taken).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Optional

RUN_DIR_ENV = "DERMATTN_RUN_DIR"  # hands rank 0's run folder to the DDP worker processes


def is_launcher_process() -> bool:
    """Rank 0 of a node, the process the user started (Lightning's DDP launcher sets ``LOCAL_RANK``
    in the workers it starts)."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def is_global_zero_process() -> bool:
    """The process of global rank 0, which locks the run folder (``experiments/run_lock.py``) and
    removes it after a failure before training. Known before the trainer exists: a worker of
    Lightning's launcher has ``LOCAL_RANK`` > 0 (and inherits the launcher's other variables);
    torchrun and SLURM give every process its global rank (``RANK``, ``SLURM_PROCID``); Lightning's
    launcher on several nodes gives each node's launcher its ``NODE_RANK``."""
    if not is_launcher_process():
        return False
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return os.environ[name] == "0"
    return os.environ.get("NODE_RANK", "0") == "0"


def external_job_id() -> Optional[str]:
    """The id all ranks of an externally launched job share, or ``None``. torchrun without
    ``--rdzv-id`` reports ``none`` for every job, which must not name a folder; SLURM steps of one
    allocation share the job id, so the step id joins it."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id.lower() != "none":
        return run_id
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        step = os.environ.get("SLURM_STEP_ID")
        return f"{job}.{step}" if step else job
    return None


def resolve_run_dir(root: str, name: str, explicit: Optional[str], resume: Optional[str], seed) -> tuple[Path, bool]:
    """The run's folder (created), and whether this call created it."""
    if resume:
        path = Path(resume).resolve().parent.parent  # <run>/checkpoints/last.ckpt
    elif os.environ.get(RUN_DIR_ENV) and not is_launcher_process():
        path = Path(os.environ[RUN_DIR_ENV])  # a worker started by Lightning's DDP launcher joins rank 0's run
    elif explicit:
        path = Path(explicit)
        if (path / "checkpoints").is_dir() and any((path / "checkpoints").iterdir()):
            raise FileExistsError(f"--run.dir {path} already holds a run; --resume its last.ckpt or pick a new folder")
    else:
        # Externally launched ranks (torchrun, SLURM) must agree on the folder: use the job's id.
        job = external_job_id()
        if job and int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) > 1:
            path = Path(root) / name / f"job-{job}-s{seed}"
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path(root) / name / f"{stamp}-s{seed}"
            suffix = 1
            while path.exists():
                suffix += 1
                path = Path(root) / name / f"{stamp}-s{seed}-{suffix}"
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    return path, created


def share_with_workers(run_dir: Path) -> None:
    """Hand the folder to the worker processes Lightning's DDP launcher will start."""
    os.environ[RUN_DIR_ENV] = str(run_dir)


def stop_sharing() -> None:
    """At the end of a run in the launching process: the next run in this process (tests,
    notebooks) resolves its own folder."""
    if is_launcher_process():
        os.environ.pop(RUN_DIR_ENV, None)


def discard_if_unused(run_dir: Optional[Path], created: bool, trained: bool = False) -> None:
    """Remove a folder this run created when the run failed before training started (``trained``:
    whether a training step was taken): a bad option or bad data leaves no run folder behind. A run
    that failed later keeps its folder, whatever it holds (``metrics.csv``, the W&B run, the
    checkpoints that fitted on a full disk). Only the process of global rank 0 removes it."""
    if not created or trained or run_dir is None or not run_dir.is_dir():
        return
    if not is_global_zero_process() or any(run_dir.glob("checkpoints/*.ckpt")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
