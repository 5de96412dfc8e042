"""Training runs started by the multi-run tools (sweep, cross-validation): each is a normal
``experiments.train`` run in its own folder, done once.

A run finished earlier with exactly the same arguments is reused, so a sweep or a CV resumes
where it stopped; a run interrupted after a checkpoint continues from its ``last.ckpt``; one made
with other arguments (changed overrides, a redefined variant) is redone from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from datamodules.entry_point import UserFacing
from lightning_modules.utils.atomic_io import write_json

RECORD = "run_args.json"


class RunFailed(UserFacing, RuntimeError):
    """A training run started by a multi-run tool failed; it printed its own error."""


def train_once(run_dir: Path, train_args: Sequence[str]) -> dict:
    """``metrics.json`` of the run in ``run_dir`` made with ``train_args`` (``--run.dir`` is added
    here), training it first unless that run already finished."""
    run_dir = Path(run_dir)
    args = [*train_args, f"--run.dir={run_dir}", "--trainer.enable_progress_bar=false"]
    record = run_dir / RECORD
    same = record.is_file() and json.loads(record.read_text()) == args
    if same and (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text())
    last = run_dir / "checkpoints" / "last.ckpt"
    if same and last.is_file():
        command = [*train_args, f"--resume={last}", "--trainer.enable_progress_bar=false"]  # the run's folder
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # a different attempt starts over
        write_json(record, args)
        command = args
    start = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "experiments.train", *command], check=True,
                       env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    except subprocess.CalledProcessError as err:
        raise RunFailed(f"the training run in {run_dir} failed (exit code {err.returncode}); its error is above. "
                        "Runs that finished are kept: the same command, once the cause is fixed, continues from "
                        "there") from None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["wall_seconds"] = metrics.get("wall_seconds", 0.0) + time.perf_counter() - start
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def mean_std(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (0 for a single value) of finite values."""
    scores = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(scores):
        return {"mean": None, "std": None, "runs": list(values)}
    return {"mean": float(scores.mean()), "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "runs": list(values)}
