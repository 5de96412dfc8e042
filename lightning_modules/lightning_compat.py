"""The one place that reads or writes Lightning's and torchmetrics' internal state.

Resuming a run bit for bit, holding a signal through validation and appending to ``metrics.csv``
need state that neither library offers through a public API. Every such access is a small named
function (or subclass) here, each with a test in ``tests/test_lightning_compat.py`` that fails
when the library moves what it reads, so a Lightning upgrade is ported in this one file.

The functions were written against the Lightning versions in :data:`SUPPORTED_LIGHTNING`;
importing this module under any other version is an error, not a silent misreading.
"""

from __future__ import annotations

import csv
import re
from typing import Any, Optional

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from torch import Tensor
from torchmetrics import Metric

from datamodules.seeding import TrainPosition

#: The Lightning releases whose internals this module reads, as (major, minor) from the first up
#: to, not including, the second: internals move between minor releases. Widen it only after
#: ``tests/test_lightning_compat.py``, ``test_resume.py`` and ``test_interruption.py`` pass on the new one.
SUPPORTED_LIGHTNING = ((2, 6), (2, 7))


def supported_range() -> str:
    """:data:`SUPPORTED_LIGHTNING` as a pip requirement's version range (``>=2.6,<2.7``)."""
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED_LIGHTNING
    return f">={lo_major}.{lo_minor},<{hi_major}.{hi_minor}"


def check_lightning_version(version: str) -> None:
    """Raise a ``RuntimeError`` unless Lightning ``version`` is in :data:`SUPPORTED_LIGHTNING`."""
    match = re.match(r"(\d+)\.(\d+)", version)
    low, high = SUPPORTED_LIGHTNING
    if match is None or not low <= (int(match[1]), int(match[2])) < high:
        wanted = supported_range()
        raise RuntimeError(
            f"lightning {version} is installed, but dermattn reads Lightning internals (for resuming, "
            f"signal handling and metrics.csv, in lightning_modules/lightning_compat.py) written for "
            f"lightning{wanted}. Install a supported release (pip install 'lightning{wanted}'), or port "
            f"lightning_compat.py to {version}, widen SUPPORTED_LIGHTNING there and run "
            "tests/test_lightning_compat.py, tests/test_resume.py and tests/test_interruption.py."
        )


check_lightning_version(L.__version__)


# -- the module's trainer ------------------------------------------------------------------------


def attached_trainer(module: L.LightningModule) -> Optional[L.Trainer]:
    """The trainer ``module`` is attached to, or ``None``. ``LightningModule.trainer`` raises a
    ``RuntimeError`` when there is none (a module built by hand, in a notebook or a test)."""
    try:
        return module.trainer
    except RuntimeError:
        return None


# -- where training stands -----------------------------------------------------------------------


def training_position(trainer: Optional[L.Trainer]) -> Optional[TrainPosition]:
    """Where a fitting ``trainer`` stands, for a checkpoint written now; ``None`` outside fitting.

    A checkpoint written at the end of an epoch (``last.ckpt``, after validation) resumes with
    the next epoch; one written mid-epoch (``interrupted.ckpt``) resumes inside its epoch, after
    the batches already trained. Lightning counts a batch whose ``on_train_batch_end`` has run as
    trained, and so does ``processed`` here. Read from the fit loop's progress counters, which
    Lightning keeps for its own restarts and documents nowhere.
    """
    if trainer is None or trainer.state.fn != TrainerFn.FITTING:
        return None
    if trainer.state.status not in (TrainerStatus.RUNNING, TrainerStatus.INTERRUPTED):  # interrupted.ckpt
        return None
    epochs = trainer.fit_loop.epoch_progress.current
    # Between epochs: the next has not begun (on_train_epoch_start), or the last has ended (a
    # SIGTERM acted on after the epoch's end). ``current_epoch`` counts the ended epochs.
    if epochs.started < epochs.ready or epochs.completed == epochs.ready:
        return TrainPosition(trainer.current_epoch, 0)
    done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
    total = trainer.num_training_batches
    if done >= total:
        return TrainPosition(trainer.current_epoch + 1, 0)
    return TrainPosition(trainer.current_epoch, done)


def resumed_mid_epoch(trainer: L.Trainer) -> bool:
    """Whether this fit re-enters an epoch a checkpoint was written in the middle of (Lightning
    then neither starts that epoch again nor calls ``on_train_epoch_start``). Lightning's own
    judgement, from its fit loop's restart stage; valid from ``on_train_start``."""
    return bool(trainer.fit_loop.restarted_mid_epoch)


# -- SIGTERM -------------------------------------------------------------------------------------


def set_received_sigterm(trainer: L.Trainer, received: bool) -> None:
    """Set the flag behind the read-only ``Trainer.received_sigterm``, which Lightning's loops act
    on at their next check (raising ``SIGTERMException``): cleared, a SIGTERM is held back;
    raised, the run stops as if one had arrived now."""
    trainer._signal_connector.received_sigterm = received


# -- ModelCheckpoint -----------------------------------------------------------------------------


def checkpoints_at_train_epoch_end(callback: ModelCheckpoint, trainer: L.Trainer) -> bool:
    """Whether ``callback`` saves in ``on_train_epoch_end`` (else in ``on_validation_end``): its
    ``save_on_train_epoch_end``, or Lightning's choice from the validation schedule when unset."""
    return bool(callback._should_save_on_train_epoch_end(trainer))


def checkpoint_skipped_now(callback: ModelCheckpoint, trainer: L.Trainer) -> bool:
    """Whether ``callback`` saves nothing at this moment: in sanity checks, outside fit, under
    ``fast_dev_run``, or when it has already saved at this global step."""
    return bool(callback._should_skip_saving_checkpoint(trainer))


def save_last_checkpoint(callback: ModelCheckpoint, trainer: L.Trainer) -> None:
    """Write ``callback``'s ``last.ckpt`` now, as it does itself after a top-k save (its name
    template, ``last_model_path`` and the removal of the previous one included)."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


# -- torchmetrics state --------------------------------------------------------------------------


def restore_metric_state(metric: Metric, states: dict[str, Any], update_count: int) -> None:
    """Put back what ``metric.metric_state`` and ``metric.update_count`` read earlier, so that
    further updates and ``compute`` continue from it. torchmetrics has no setter: its update
    counter gates ``compute`` (and DDP syncs), and a cached result must not outlive the states."""
    for key, value in states.items():
        if isinstance(value, list):
            value = [v.to(metric.device) for v in value]
        else:
            value = value.to(metric.device)
        setattr(metric, key, value)
    metric._update_count = int(update_count)
    metric._computed = None


# -- Lightning's epoch sums of self.log(..., on_epoch=True) ---------------------------------------


def _epoch_results(trainer: L.Trainer) -> dict:
    # The training epoch loop's result collection: one entry per logged key of the running epoch.
    return trainer.fit_loop.epoch_loop._results or {}


def training_epoch_sums(trainer: L.Trainer) -> dict[str, dict[str, Tensor]]:
    """The running training epoch's accumulations of ``self.log(..., on_epoch=True)`` tensors:
    per key, ``value`` (a mean reduction's batch-size-weighted sum) and, for a mean,
    ``cumulated_batch_size``. Lightning keeps no public handle on them."""
    sums = {}
    for key, result in _epoch_results(trainer).items():
        if getattr(result, "is_tensor", False) and result.meta.on_epoch:
            sums[key] = {"value": result.value.detach().clone()}
            if result.meta.is_mean_reduction:
                sums[key]["cumulated_batch_size"] = result.cumulated_batch_size.detach().clone()
    return sums


def add_training_epoch_sums(trainer: L.Trainer, sums: dict[str, dict[str, Tensor]]) -> None:
    """Combine ``sums`` (from :func:`training_epoch_sums`) into the running epoch's, for keys
    logged in it so far (a key appears with its first ``self.log`` of the epoch): added for sums
    and means, reduced for max/min."""
    results = _epoch_results(trainer)
    for key, entry in sums.items():
        result = results.get(key)
        if result is None:
            continue
        stored = entry["value"].to(result.value.device)
        if result.meta.is_max_reduction or result.meta.is_min_reduction:
            result.value = result.meta.reduce_fx(stored, result.value)
        else:
            result.value = stored + result.value
        if "cumulated_batch_size" in entry:
            stored = entry["cumulated_batch_size"].to(result.cumulated_batch_size.device)
            result.cumulated_batch_size = stored + result.cumulated_batch_size


# -- CSVLogger ------------------------------------------------------------------------------------


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing ``metrics.csv`` when it is created (in
    ``_check_log_dir_exists``); this one adopts the file's header and appends."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = list(next(csv.reader(handle), []))


class AppendingCSVLogger(CSVLogger):
    """A ``CSVLogger`` that appends to an existing ``metrics.csv`` instead of replacing it (a
    resumed run keeps the epochs logged before its interruption). ``CSVLogger`` creates its writer
    in its ``experiment`` property, with no parameter for the writer's class."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
