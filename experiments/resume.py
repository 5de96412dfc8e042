"""``--resume <run>/checkpoints/last.ckpt``: continue a run with its own settings.

The run's saved ``config.yaml`` is read after the experiment's ``--config`` files and before any
other override, so a resumed run has the settings it was started with unless the command line
changes them (``--trainer.max_epochs=40`` extends a run). What decides the test split may not
change: a resumed run that scored another split would mix two runs in one folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import yaml

from lightning_modules.modules.loading import CheckpointError, read_checkpoint

#: Settings a resumed run must share with the run it continues (else its test split changes).
DATA_IDENTITY = ("dataset", "data_dir", "source_options", "meta_features", "fold", "n_folds", "split_seed",
                 "min_class_images")  # fmt: skip


def resumed_run_config(args: Sequence[str]) -> Optional[Path]:
    """``<run>/config.yaml`` of the checkpoint named by ``--resume`` in ``args``, if any. The
    checkpoint is checked first, before anything is written to the run folder."""
    resume = None
    for i, arg in enumerate(args):
        if arg == "--resume" and i + 1 < len(args):
            resume = args[i + 1]
        elif arg.startswith("--resume="):
            resume = arg.split("=", 1)[1]
    if not resume or resume in ("null", "None"):
        return None
    try:
        read_checkpoint(resume, mmap=True)
    except (FileNotFoundError, CheckpointError) as err:
        raise type(err)(f"--resume: {err}. Nothing in its run folder was changed; resume from another of its "
                        "checkpoints (checkpoints/last.ckpt is written at the end of every epoch)") from None
    config = Path(resume).resolve().parent.parent / "config.yaml"
    return config if config.is_file() else None


def with_run_config(args: Sequence[str], run_config: Path) -> list[str]:
    """Put the run's saved config after the given ``--config`` files and before other overrides."""
    configs, others, i = [], [], 0
    while i < len(args):
        if args[i] in ("--config", "-c") and i + 1 < len(args):
            configs += args[i:i + 2]
            i += 2
            continue
        (configs if args[i].startswith("--config=") else others).append(args[i])
        i += 1
    return [*configs, "--config", str(run_config), *others]


def check_same_data(run_config: Path, config) -> None:
    """Refuse a resume whose data settings differ from the saved run's."""
    saved = (yaml.safe_load(run_config.read_text()) or {}).get("data", {})
    changed = {k: (saved.get(k), config.data.get(k)) for k in DATA_IDENTITY if saved.get(k) != config.data.get(k)}
    if changed:
        details = ", ".join(f"data.{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"--resume: the data differ from the run being resumed ({run_config}): {details}. "
                         "Resume without changing them, or start a new run.")
