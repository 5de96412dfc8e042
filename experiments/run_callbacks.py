"""The run's callbacks: ``trainer.callbacks`` of the config (``experiments/base.yaml`` lists the
defaults) with the ``checkpoint:`` and ``early_stopping:`` groups put in their place.

Lightning calls the callbacks of a hook in list order, except that it moves every checkpoint
callback (``ModelCheckpoint``, ``ResumableInterruption``) after the others, keeping their order.
``checkpoint:`` and ``early_stopping:`` go in just before the first checkpoint callback of the
list, so that ``last.ckpt`` is written before ``ResumableInterruption`` acts on a held signal.
Both watch the model's ``monitor`` when told ``monitor: auto``, in the mode the model gives.
"""

from __future__ import annotations

from typing import Any, Sequence

from lightning.pytorch.callbacks import Callback, Checkpoint

from experiments.net_options import ConfigError
from lightning_modules.callbacks.run_context import RunContext, UsesRunContext
from lightning_modules.modules.base import DermModule


def without(callbacks: Sequence[Callback], names: Sequence[str]) -> list[Callback]:
    """``callbacks`` less those whose class is named in ``names`` (``--run.drop_callbacks``)."""
    present = {type(c).__name__ for c in callbacks}
    unknown = [n for n in names if n not in present]
    if unknown:
        raise ConfigError(f"--run.drop_callbacks: {unknown} not in trainer.callbacks ({sorted(present)})")
    return [c for c in callbacks if type(c).__name__ not in names]


def resolve_monitor(args: Any, model: DermModule) -> None:
    """``monitor: auto`` becomes the model's ``monitor``; the mode is the model's for the metric."""
    if args.monitor == "auto":
        args.monitor = model.monitor
    if args.monitor:
        args.mode = model.mode_of(args.monitor)


def in_order(listed: Sequence[Callback], watching: Sequence[Callback]) -> list[Callback]:
    """``watching`` (early stopping, the run's checkpoint) before the first checkpoint callback."""
    at = next((i for i, c in enumerate(listed) if isinstance(c, Checkpoint)), len(listed))
    return [*listed[:at], *watching, *listed[at:]]


def hand_over(callbacks: Sequence[Callback], context: RunContext) -> None:
    """Tell every callback that uses it the run's name and resume command."""
    for callback in callbacks:
        if isinstance(callback, UsesRunContext):
            callback.run_context = context
