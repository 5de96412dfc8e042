"""The run's loggers: CSV always (appending across resumes), W&B offline by default."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Optional, Sequence

from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_modules.lightning_compat import AppendingCSVLogger
from lightning_modules.utils.atomic_io import atomic_write


def make_csv_logger(run_dir: Path) -> CSVLogger:
    """Writes ``<run_dir>/metrics.csv`` and ``hparams.yaml`` (and makes ``trainer.log_dir`` the run
    folder, so the resolved ``config.yaml`` lands there too). Appends: a resumed run keeps the
    epochs logged before its interruption."""
    return AppendingCSVLogger(save_dir=str(run_dir), name="", version="")


def is_global_rank_zero() -> bool:
    """Before the process group exists: torchrun sets ``RANK``, srun ``SLURM_PROCID``; processes
    started by Lightning's launcher carry ``LOCAL_RANK``/``NODE_RANK`` only."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name) is not None:
            return int(os.environ[name]) == 0
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def make_wandb_logger(run_dir: Path, name: str, project: str, group: Optional[str] = None, job_type: str = "train",
                      tags: Sequence[str] = ()) -> WandbLogger:
    """Offline unless ``WANDB_MODE=online`` (``disabled`` turns it off): no account needed;
    ``wandb sync <run>/wandb/offline-run-*`` uploads later. The run id lives in the run folder, so
    a resumed run continues the same W&B run."""
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else ""
    if not run_id:
        run_id = secrets.token_hex(4)  # W&B ids are short lowercase alphanumerics
        if is_global_rank_zero():
            atomic_write(id_file, lambda f: f.write(run_id))  # only W&B on global rank 0 logs
    return WandbLogger(
        project=project,
        name=f"{name}/{run_dir.name}",
        save_dir=str(run_dir),
        id=run_id,
        resume="allow",
        mode=os.environ.get("WANDB_MODE", "offline"),
        log_model=False,
        group=group,
        job_type=job_type,
        tags=list(tags),
    )
