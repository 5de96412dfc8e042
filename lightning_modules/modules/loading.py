"""A trained module back from its checkpoint, through Lightning's own ``load_from_checkpoint``.

A training run's checkpoint holds tensors and plain values only (it loads with
``torch.load(weights_only=True)``): LightningCLI stores the module's ``_class_path`` and its
configuration, the network's ``class_path``/``init_args`` among it, and Lightning rebuilds the
module from those. Only subclasses of :class:`~lightning_modules.modules.base.DermModule` are
accepted, and a network that was pretrained is rebuilt without downloading anything (its
weights are in the checkpoint).
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any, Sequence

import torch

from lightning_modules.modules.base import CALIBRATION_KEY, DermModule
from lightning_modules.training.finite_guard import check_weights
from lightning_modules.utils.atomic_io import atomic_write


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, or not a checkpoint)."""


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's contents (``weights_only``), or an error naming the file. ``mmap`` maps
    the tensors instead of reading them (a cheap check that the whole file is intact)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err}); it may "
                              "have been truncated by an interrupted write or copy") from err


def write_calibration(path: str | Path, calibration: dict[str, Any]) -> Path:
    """Store ``calibration`` (plain values: ``temperature`` and how it was fitted) in the checkpoint
    at ``path``, rewritten whole (atomically); modules loaded from it then predict calibrated
    (:meth:`~lightning_modules.modules.base.DermModule.on_load_checkpoint`)."""
    temperature = calibration.get("temperature")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"{path}: a calibration needs a positive temperature, got {temperature!r}")
    checkpoint = read_checkpoint(path)
    checkpoint[CALIBRATION_KEY] = dict(calibration)
    return atomic_write(path, lambda f: torch.save(checkpoint, f), mode="wb")


def checkpoint_paths(ckpt: str | Path | Sequence[str | Path]) -> list[Path]:
    """One checkpoint, several, or a folder (every ``best-*.ckpt`` below it: e.g. the folds of a
    cross-validation)."""
    paths: list[Path] = []
    for item in [ckpt] if isinstance(ckpt, (str, Path)) else list(ckpt):
        item = Path(item)
        if item.is_dir():
            found = sorted(item.rglob("checkpoints/best-*.ckpt"))
            if not found:
                raise FileNotFoundError(f"{item} holds no checkpoints/best-*.ckpt")
            paths += found
        else:
            paths.append(item)
    return paths


def module_class(class_path: str, path: str | Path) -> type[DermModule]:
    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name, None) if module_name else None
    if not (isinstance(cls, type) and issubclass(cls, DermModule)):
        raise ValueError(f"{path}: its model class {class_path!r} is not a dermattn module (DermModule)")
    return cls


def load_module(path: str | Path, map_location: Any = "cpu") -> DermModule:
    """The module a training run saved at ``path``, in eval mode; refused (NonFiniteError) when a
    weight is NaN or infinite."""
    hparams = read_checkpoint(path).get("hyper_parameters", {})
    if "_class_path" in hparams and "net" not in hparams:
        raise ValueError(f"{path} was written before networks were configured under model.init_args.net "
                         f"(its module {hparams['_class_path']} listed the network's options itself); "
                         "retrain it with the current configs")
    if "_class_path" not in hparams or not isinstance(hparams.get("net"), dict):
        raise ValueError(f"{path}: not a checkpoint of a dermattn training run (its hyper-parameters name no "
                         "model class and network config; modules built by hand load with "
                         "`YourModule.load_from_checkpoint(path, net=...)`)")
    cls = module_class(hparams["_class_path"], path)
    net = copy.deepcopy(hparams["net"])
    options = net.setdefault("init_args", {})
    if options.get("pretrained") or options.get("weights_path"):
        options.update(pretrained=False, weights_path=None)  # the weights come from the checkpoint
    module = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True, net=net)
    check_weights(module.state_dict(), f"checkpoint {path}")  # a diverged run's weights predict nothing
    return module.eval()
