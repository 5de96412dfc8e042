"""Every read or write of Lightning's and torchmetrics' internals (``lightning_modules/lightning_compat.py``)
checked on a real tiny Trainer, metric or logger: these fail when a release moves what they touch."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC

from datamodules.seeding import TrainPosition
from lightning_modules.lightning_compat import (AppendingCSVLogger, add_training_epoch_sums, attached_trainer,
                                                check_lightning_version, checkpoint_skipped_now,
                                                checkpoints_at_train_epoch_end, restore_metric_state,
                                                resumed_mid_epoch, save_last_checkpoint, set_received_sigterm,
                                                supported_range, training_epoch_sums, training_position)

REPO = Path(__file__).resolve().parents[1]


class Tiny(L.LightningModule):
    """Four training batches of two; logs batch_idx + 1 as a mean, a sum and a max over the epoch;
    ``val_loss`` is the epoch number (so epoch 0 stays the best)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        index = torch.tensor(float(batch_idx + 1))
        for name, reduce in (("mean", "mean"), ("sum", "sum"), ("max", "max")):
            self.log(f"{name}_of_index", index, on_step=False, on_epoch=True, reduce_fx=reduce, batch_size=2)
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(float(self.current_epoch)), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)


def tiny_trainer(root: Path, *callbacks: L.Callback, **options) -> L.Trainer:
    settings = dict(max_epochs=1, num_sanity_val_steps=0, enable_checkpointing=False)
    return L.Trainer(default_root_dir=root, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=list(callbacks), **{**settings, **options})  # fmt: skip


class At(L.Callback):
    """Calls ``do(trainer, pl_module)`` in the named hooks (``train_batch_end`` with the batch index)."""

    def __init__(self, do, *hooks: str):
        self.do, self.hooks, self.seen = do, hooks, []

    def _call(self, hook, trainer, pl_module, *where):
        if hook in self.hooks:
            self.seen.append((hook, trainer.current_epoch, *where, self.do(trainer, pl_module)))

    def on_train_start(self, trainer, pl_module):
        self._call("train_start", trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module):
        self._call("train_epoch_start", trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._call("train_batch_end", trainer, pl_module, batch_idx)

    def on_validation_end(self, trainer, pl_module):
        self._call("sanity_check" if trainer.sanity_checking else "validation_end", trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self._call("train_epoch_end", trainer, pl_module)


def test_the_version_check_names_the_installed_version_and_the_supported_range():
    check_lightning_version(L.__version__)  # what importing lightning_compat just did
    low = supported_range().split(",")[0].removeprefix(">=")
    check_lightning_version(f"{low}.0")
    check_lightning_version(f"{low}.99rc1")
    major, minor = (int(n) for n in low.split("."))
    for version in (f"{major}.{minor - 1}.9", f"{major}.{minor + 1}.0", f"{major + 1}.0.0", "nightly"):
        with pytest.raises(RuntimeError, match=rf"lightning {re.escape(version)} is installed.*"
                                               rf"pip install 'lightning{re.escape(supported_range())}'"):
            check_lightning_version(version)


def test_attached_trainer_is_the_fitting_trainer_or_none(tmp_path):
    model = Tiny()
    assert attached_trainer(model) is None
    probe = At(lambda trainer, module: attached_trainer(module) is trainer, "train_start")
    tiny_trainer(tmp_path, probe).fit(model)
    assert probe.seen == [("train_start", 0, True)]


def test_training_position_is_the_next_epoch_and_the_batches_done(tmp_path):
    probe = At(lambda trainer, module: training_position(trainer),
               "train_epoch_start", "train_batch_end", "validation_end", "train_epoch_end")
    trainer = tiny_trainer(tmp_path, probe, max_epochs=2)
    model = Tiny()
    trainer.fit(model)
    epoch0 = [("train_epoch_start", 0, (0, 0)),
              ("train_batch_end", 0, 0, (0, 1)), ("train_batch_end", 0, 1, (0, 2)),
              ("train_batch_end", 0, 2, (0, 3)), ("train_batch_end", 0, 3, (1, 0)),  # the epoch's last
              ("validation_end", 0, (1, 0)), ("train_epoch_end", 0, (1, 0))]  # fmt: skip
    assert probe.seen[:7] == epoch0 and probe.seen[7] == ("train_epoch_start", 1, (1, 0))
    assert probe.seen[-1] == ("train_epoch_end", 1, (2, 0))
    assert all(isinstance(p[-1], TrainPosition) for p in probe.seen)
    assert training_position(trainer) is None  # the fit has finished
    assert training_position(None) is None
    trainer.validate(model, verbose=False)
    assert training_position(trainer) is None  # not fitting


def test_resumed_mid_epoch_only_for_a_checkpoint_written_inside_an_epoch(tmp_path):
    def save_mid_epoch(trainer, module):
        if trainer.global_step == 2:
            trainer.save_checkpoint(tmp_path / "mid.ckpt")

    first = tiny_trainer(tmp_path, At(save_mid_epoch, "train_batch_end"))
    first.fit(Tiny())
    first.save_checkpoint(tmp_path / "end.ckpt")  # after the epoch: resumes with the next
    for ckpt, expected in ((None, False), ("mid.ckpt", True), ("end.ckpt", False)):
        probe = At(lambda trainer, module: resumed_mid_epoch(trainer), "train_start")
        tiny_trainer(tmp_path, probe, max_epochs=2).fit(Tiny(), ckpt_path=ckpt and tmp_path / ckpt)
        assert probe.seen == [("train_start", 1 if ckpt == "end.ckpt" else 0, expected)], ckpt


@pytest.mark.parametrize("then_clear", [False, True], ids=["raised", "raised-and-cleared"])
def test_the_sigterm_flag_is_the_one_lightning_acts_on(then_clear, tmp_path):
    def flag(trainer, module):
        if trainer.global_step == 1:
            set_received_sigterm(trainer, True)
            assert trainer.received_sigterm
            if then_clear:
                set_received_sigterm(trainer, False)
                assert not trainer.received_sigterm

    trainer = tiny_trainer(tmp_path, At(flag, "train_batch_end"))
    if then_clear:
        trainer.fit(Tiny())
        assert trainer.global_step == 4
    else:
        with pytest.raises(SIGTERMException):
            trainer.fit(Tiny())
        assert trainer.global_step == 1  # stopped after the batch it arrived in


def test_model_checkpoint_schedule_skip_and_last(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1, save_last=True)

    def probe(trainer, module):
        # Runs before the checkpoint's own on_train_epoch_end (Lightning orders checkpoints last).
        found = {"at_epoch_end": checkpoints_at_train_epoch_end(checkpoint, trainer),
                 "skipped": checkpoint_skipped_now(checkpoint, trainer)}  # fmt: skip
        if trainer.current_epoch == 1:  # val_loss got worse: the checkpoint would write nothing
            save_last_checkpoint(checkpoint, trainer)
            found["skipped_after_saving"] = checkpoint_skipped_now(checkpoint, trainer)
        return found

    sanity = At(lambda trainer, module: checkpoint_skipped_now(checkpoint, trainer), "sanity_check")
    epoch_end = At(probe, "train_epoch_end")
    trainer = tiny_trainer(tmp_path, checkpoint, sanity, epoch_end, max_epochs=2, num_sanity_val_steps=1,
                           enable_checkpointing=True)
    trainer.fit(Tiny())
    assert sanity.seen == [("sanity_check", 0, True)]
    assert epoch_end.seen == [("train_epoch_end", 0, {"at_epoch_end": True, "skipped": False}),
                              ("train_epoch_end", 1, {"at_epoch_end": True, "skipped": False,
                                                      "skipped_after_saving": True})]  # fmt: skip
    assert checkpoint.last_model_path == str(tmp_path / "ckpt" / "last.ckpt")
    assert torch.load(checkpoint.last_model_path, weights_only=True)["epoch"] == 1
    assert torch.load(checkpoint.best_model_path, weights_only=True)["epoch"] == 0
    trainer.validate(Tiny(), verbose=False)
    assert checkpoint_skipped_now(checkpoint, trainer)  # not fitting

    every_other = tiny_trainer(tmp_path, check_val_every_n_epoch=2)
    assert not checkpoints_at_train_epoch_end(ModelCheckpoint(dirpath=tmp_path), every_other)
    assert not checkpoints_at_train_epoch_end(ModelCheckpoint(dirpath=tmp_path, save_on_train_epoch_end=False),
                                              trainer)


@pytest.mark.parametrize("make", [MeanMetric, BinaryAUROC], ids=["tensor-states", "list-states"])
def test_a_restored_metric_continues_as_if_never_interrupted(make):
    batches = [(torch.tensor([0.2, 0.9, 0.4]), torch.tensor([0, 1, 1])),
               (torch.tensor([0.7, 0.1]), torch.tensor([1, 0])), (torch.tensor([0.3, 0.8]), torch.tensor([0, 0]))]

    def update(metric, batch):
        metric.update(*batch) if isinstance(metric, BinaryAUROC) else metric.update(batch[0])

    whole, before = make(), make()
    for batch in batches[:2]:
        update(whole, batch)
        update(before, batch)
    states = {k: list(v) if isinstance(v, list) else v.clone() for k, v in before.metric_state.items()}
    resumed = make()
    update(resumed, batches[2])
    resumed.compute()  # a cached result and states that the restore must replace
    restore_metric_state(resumed, states, before.update_count)
    assert resumed.update_count == 2
    assert torch.equal(resumed.compute(), before.compute())
    update(whole, batches[2])
    update(resumed, batches[2])
    assert resumed.update_count == whole.update_count == 3
    assert torch.equal(resumed.compute(), whole.compute())


def test_epoch_sums_are_read_and_added_back(tmp_path):
    taken = At(lambda trainer, module: training_epoch_sums(trainer) if trainer.global_step == 2 else None,
               "train_batch_end")
    tiny_trainer(tmp_path, taken).fit(Tiny())
    sums = taken.seen[1][-1]  # after batches 1 and 2 of 4, batch size 2
    assert {k.split(".")[-1]: {n: float(t) for n, t in v.items()} for k, v in sums.items()} == {
        "mean_of_index": {"value": 2 * 1 + 2 * 2, "cumulated_batch_size": 4},  # batch-size-weighted
        "sum_of_index": {"value": 1 + 2}, "max_of_index": {"value": 2}}  # fmt: skip

    stored = {**sums, next(k for k in sums if k.endswith("max_of_index")): {"value": torch.tensor(9.0)}}
    add = At(lambda trainer, module: add_training_epoch_sums(trainer, stored) if trainer.global_step == 1 else None,
             "train_batch_end")
    trainer = tiny_trainer(tmp_path, add)
    trainer.fit(Tiny())
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert logged["mean_of_index"] == pytest.approx((6 + 2 * (1 + 2 + 3 + 4)) / (4 + 8))
    assert logged["sum_of_index"] == 3 + (1 + 2 + 3 + 4)
    assert logged["max_of_index"] == 9  # the larger of the stored and the epoch's (4), not their sum


def test_the_csv_logger_appends_to_an_existing_metrics_csv(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,val\n0,3,0.5\n")
    logger = AppendingCSVLogger(save_dir=str(tmp_path), name="", version="")
    assert Path(logger.log_dir) == tmp_path
    logger.log_metrics({"epoch": 1, "val": 0.25}, step=7)
    logger.save()
    logger.log_metrics({"epoch": 2, "other": 1.0}, step=9)  # a new column: Lightning rewrites the header
    logger.save()
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"epoch": "0", "step": "3", "val": "0.5", "other": ""},
                    {"epoch": "1", "step": "7", "val": "0.25", "other": ""},
                    {"epoch": "2", "step": "9", "val": "", "other": "1.0"}]  # fmt: skip


# Names of Lightning's and torchmetrics' internals the project touches; only lightning_compat may.
INTERNALS = re.compile(r"\._(trainer|signal_connector|results|update_count|defaults|computed"
                       r"|should_save_on_train_epoch_end|should_skip_saving_checkpoint|save_last_checkpoint"
                       r"|monitor_candidates|check_log_dir_exists|experiment|fs)\b"
                       r"|\.(epoch_progress|batch_progress|restarted_mid_epoch)\b")


def test_no_other_module_touches_lightning_internals():
    found = []
    for folder in ("datamodules", "lightning_modules", "experiments"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name == "lightning_compat.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if INTERNALS.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
