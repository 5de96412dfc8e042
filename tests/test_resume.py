"""A resumed run is the run that would have happened: stopped after epoch 1 and resumed from
``last.ckpt``, a 3-epoch run logs the same validation metrics, ends with the same weights and
writes the same ``metrics.json`` as the uninterrupted run, bit for bit on CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from datamodules.samplers import ClassBalancedBatchSampler, SeededSampler
from experiments.train import main as train
from tests.test_experiments import REPO, quick_args

LIMITS = ("--trainer.max_epochs=3", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
          "--run.wandb=false")  # fmt: skip
CASES = {
    "metablock": ("metablock.yaml",),
    # A push after every epoch: one before the stop (epoch 1) and one after it (epoch 2).
    "protopnet": ("protopnet.yaml", "--model.init_args.push_start=1",
                  "--model.init_args.push_every=1", "--model.init_args.prototypes_per_class=2",
                  "--model.init_args.last_layer_epochs=2"),
    "abe": ("abe.yaml",),  # P x K batches
}  # fmt: skip


class StopBeforeEpoch(L.Callback):
    """Stands for a run killed between epochs: it fails as epoch ``epoch`` starts (not when resumed:
    the run's config.yaml, which the resume reads, lists this callback too)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and trainer.ckpt_path is None:
            raise RuntimeError("stopped for the test")


def val_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/loss")]
    return [{k: v for k, v in r.items() if k.startswith(("val/", "epoch", "step")) and v} for r in rows]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def assert_same_run(a: Path, b: Path, test: bool = True, epochs: int = 3) -> None:
    rows_a, rows_b = val_rows(a), val_rows(b)
    assert len(rows_a) == epochs and rows_a == rows_b  # every epoch once, every metric equal as written
    # All of metrics.csv, training rows included: an epoch interrupted in its middle still
    # reports means over all its batches (MidEpochMetrics).
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    weights_a, weights_b = final_weights(a), final_weights(b)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    if not test:
        return
    test_a = json.loads((a / "metrics.json").read_text())["test"]
    test_b = json.loads((b / "metrics.json").read_text())["test"]
    assert test_a == test_b


# metablock with every `make test`; ProtoPNet (a push on each side of the stop) and ABE-M (P x K
# batches), the slowest, in `make test-slow`.
@pytest.mark.parametrize("case", [c if c == "metablock" else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def test_resume_after_an_epoch_equals_the_uninterrupted_run(case, tmp_path, synthetic_cache):
    config, *extra = CASES[case]
    args = quick_args(REPO / "experiments" / config, tmp_path / "runs", synthetic_cache, *LIMITS, *extra)
    whole = train(args + ["--run.name=whole"])

    # First of all callbacks, as a kill between epochs would be: before any epoch-start hook acts
    # (the learning-rate monitor logs there).
    stop = {"class_path": "tests.test_resume.StopBeforeEpoch", "init_args": {"epoch": 2}}
    defaults = yaml.safe_load((REPO / "experiments" / "base.yaml").read_text())["trainer"]["callbacks"]
    stopped_args = args + ["--run.name=stopped", f"--trainer.callbacks={json.dumps([stop, *defaults])}"]
    with pytest.raises(RuntimeError, match="stopped for the test"):
        train(stopped_args)
    (stopped,) = (tmp_path / "runs" / "stopped").iterdir()
    assert torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    # Resumed with another number of workers: the data do not depend on it.
    resumed = train(["--config", str(REPO / "experiments" / config),
                     f"--resume={stopped / 'checkpoints' / 'last.ckpt'}", "--trainer.enable_progress_bar=false",
                     "--data.num_workers=2" if case == "metablock" else "--data.num_workers=0"])  # fmt: skip
    assert resumed == stopped
    assert_same_run(whole, resumed)


def test_a_mid_epoch_resume_trains_the_rest_of_the_epoch_on_the_same_samples():
    """Resumed at (epoch 1, 10 samples done), the sampler yields exactly the rest of epoch 1."""
    whole = SeededSampler(40, seed=3)
    whole.set_epoch(1)
    resumed = SeededSampler(40, seed=3, resume_at=(1, 10))
    assert list(resumed) == list(whole)[10:]
    resumed.set_epoch(2)
    whole.set_epoch(2)
    assert list(resumed) == list(whole)  # later epochs are whole


def test_sample_draws_depend_on_seed_epoch_and_position_only():
    labels = np.repeat(np.arange(4), 10)
    sampler = SeededSampler(40, seed=3, weights=np.where(labels == 0, 4.0, 1.0))
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == epoch0 and epoch0 != epoch1  # no hidden state advances between epochs
    assert len({key.seed for key in epoch0}) == 40  # every position its own augmentation seed
    oversampled = np.mean([labels[k.index] == 0 for e in range(20) for k in (sampler.set_epoch(e) or sampler)])
    assert 0.5 < oversampled < 0.65  # weight 4 of 7: 4/7 = 0.571 of the draws are class 0

    # Under DDP the two ranks split the one-process epoch between them, position by position.
    ranks = [SeededSampler(40, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    single = SeededSampler(40, seed=3)
    assert [k for pair in zip(*ranks) for k in pair] == list(single)


def test_pk_batches_resume_and_seed_every_image():
    labels = np.repeat(np.arange(5), 9)
    whole = ClassBalancedBatchSampler(labels, 3, 4, num_batches=6, seed=2)
    whole.sampler.set_epoch(3)
    resumed = ClassBalancedBatchSampler(labels, 3, 4, num_batches=6, seed=2, resume_at=(3, 2))
    assert list(resumed) == list(whole)[2:]
    batch = next(iter(whole))
    assert len(batch) == 12 and len({k.seed for k in batch}) == 12
    assert {labels[k.index] for k in batch}.__len__() == 3  # P classes


def test_an_item_is_augmented_by_its_key_alone(synthetic_cache):
    """The same key gives the same tensor, whatever was loaded before it (as in another worker)."""
    from datamodules.lesion_datamodule import LesionDataModule
    from datamodules.seeding import SampleKey
    from tests.conftest import SMALL_SYNTHETIC

    data = LesionDataModule(data_dir=str(synthetic_cache), source_options=SMALL_SYNTHETIC, image_size=32,
                            num_workers=0)  # fmt: skip
    data.setup("fit")
    train_set = data.datasets["train"]
    first = train_set[SampleKey(5, 1234)]["image"]
    for other in range(6):
        train_set[SampleKey(other, 99 + other)]
    assert torch.equal(train_set[SampleKey(5, 1234)]["image"], first)
    assert not torch.equal(train_set[SampleKey(5, 4321)]["image"], first)
