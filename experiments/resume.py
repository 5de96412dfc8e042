"""``--resume <run>/checkpoints/last.ckpt``: continue a run with its own settings.

The run's saved ``config.yaml`` is read after the experiment's ``--config`` files and before any
other override, so a resumed run has the settings it was started with unless the command line
changes them (``--trainer.max_epochs=40`` extends a run). What decides the test split may not
change: a resumed run that scored another split would mix two runs in one folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import yaml

from lightning_modules.modules.loading import CheckpointError, read_checkpoint

OLD_PUSH = "lightning_modules.callbacks.prototype_push.PrototypePush"  # a trainer callback before it was the module's
#: Settings a resumed run must share with the run it continues (else its test split changes).
DATA_IDENTITY = ("dataset", "data_dir", "source_options", "meta_features", "fold", "n_folds", "split_seed",
                 "min_class_images", "split", "group_by")  # fmt: skip
#: What a run saved before a setting existed had, in effect.
DATA_DEFAULTS = {"split": "folds"}


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


def with_run_config(args: Sequence[str], run_config: Path, base_config: Path) -> list[str]:
    """Put the run's saved config after the given ``--config`` files and before other overrides
    (``base_config``: the defaults a run saved by an older version may need back)."""
    configs, others, i = [], [], 0
    while i < len(args):
        if args[i] in ("--config", "-c") and i + 1 < len(args):
            configs += args[i:i + 2]
            i += 2
            continue
        (configs if args[i].startswith("--config=") else others).append(args[i])
        i += 1
    return [*configs, "--config", str(run_config), *older_layout(run_config, base_config), *others]


def older_layout(run_config: Path, base_config: Path) -> list[str]:
    """Overrides that resume a run saved before ``trainer.callbacks`` listed the default callbacks.

    Its ``config.yaml`` has ``trainer.callbacks: null`` (or only the experiment's own callbacks),
    which would now replace the defaults of ``base.yaml``; ProtoPNet's push was one of them, with
    its schedule, which is now the module's. Such a run gets the defaults (``base_config``'s) plus
    its own callbacks, and the push's schedule as ``model.init_args``.
    """
    saved = yaml.safe_load(run_config.read_text()) or {}
    if "drop_callbacks" in (saved.get("run") or {}):
        return []  # saved with the callbacks listed
    listed = (saved.get("trainer") or {}).get("callbacks") or []
    listed = listed if isinstance(listed, list) else [listed]
    push = [c for c in listed if c.get("class_path") == OLD_PUSH]
    defaults = yaml.safe_load(base_config.read_text())["trainer"]["callbacks"]
    args = [f"--trainer.callbacks={json.dumps(defaults + [c for c in listed if c not in push])}"]
    for key in ("push_start", "push_every", "push_at_end"):
        for callback in push:
            if key in (callback.get("init_args") or {}):
                args.append(f"--model.init_args.{key}={json.dumps(callback['init_args'][key])}")
    return args


def check_same_data(run_config: Path, config) -> None:
    """Refuse a resume whose data settings differ from the saved run's."""
    saved = (yaml.safe_load(run_config.read_text()) or {}).get("data", {})
    saved = {k: saved.get(k, DATA_DEFAULTS.get(k)) for k in DATA_IDENTITY}
    changed = {k: (saved[k], config.data.get(k)) for k in DATA_IDENTITY if saved[k] != config.data.get(k)}
    if changed:
        details = ", ".join(f"data.{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"--resume: the data differ from the run being resumed ({run_config}): {details}. "
                         "Resume without changing them, or start a new run.")
