"""The run's loggers: CSV always (appending across resumes), W&B offline by default."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing ``metrics.csv``; a resumed run must keep the epochs
    logged before the interruption, so this one adopts the file's header and appends."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = list(next(csv.reader(handle), []))


class ResumableCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def make_csv_logger(run_dir: Path) -> CSVLogger:
    """Writes ``<run_dir>/metrics.csv`` and ``hparams.yaml`` (and makes ``trainer.log_dir`` the run
    folder, so the resolved ``config.yaml`` lands there too)."""
    return ResumableCSVLogger(save_dir=str(run_dir), name="", version="")


def make_wandb_logger(run_dir: Path, name: str, project: str) -> WandbLogger:
    """Offline unless WANDB_MODE=online: no account needed; `wandb sync <run>/wandb/offline-*` later.
    The run id is kept in the run folder so a resumed run continues the same W&B run."""
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    logger = WandbLogger(
        project=project,
        name=f"{name}/{run_dir.name}",
        save_dir=str(run_dir),
        offline=os.environ.get("WANDB_MODE", "offline") not in ("online", "run"),
        id=run_id,
        resume="allow" if run_id else None,
        log_model=False,
    )
    if run_id is None:
        id_file.write_text(logger.version or "")
    return logger
