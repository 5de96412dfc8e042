"""Interruption as a scheduler or a user does it: signals sent to a real training process."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.train import main as train
from tests.test_experiments import REPO, quick_args
from tests.test_resume import assert_same_run

LIMITS = ("--trainer.max_epochs=3", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
          "--run.test=false")  # fmt: skip


def run_environment() -> dict[str, str]:
    """The environment of a training run started from a terminal. Not the test process's W&B
    service (``WANDB_SERVICE``, which wandb hands to children): a run killed with SIGKILL would
    stay registered there and its resume be refused as "run ID in use"; a user's SIGKILL takes the
    run's own service down with it."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "PYTHONUNBUFFERED": "1"}


def start_paused_run(tmp_path: Path, synthetic_cache: Path, step: int, hook: str = "train_batch_end",
                     until_held: bool = True) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / "paused"
    pause = {"class_path": "tests.interrupt_helpers.PauseAtStep",
             "init_args": {"step": step, "marker": str(marker), "hook": hook, "until_held": until_held}}
    args = quick_args(REPO / "experiments" / "metablock.yaml", tmp_path / "runs", synthetic_cache, *LIMITS,
                      f"--trainer.callbacks+={json.dumps(pause)}")  # fmt: skip
    # A shell that starts jobs in the background (CI runners, `make ... &`) makes them ignore
    # SIGINT, and Python then never turns Ctrl-C into KeyboardInterrupt: give the run a terminal's
    # default disposition, as a user's would have.
    process = subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=run_environment(),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                               start_new_session=True)  # its own process group, as a scheduler's job  # fmt: skip
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never reached the pause"
        time.sleep(0.1)
    return process, marker


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic_cache) -> Path:
    """The run the interrupted ones must become."""
    return train(quick_args(REPO / "experiments" / "metablock.yaml", tmp_path_factory.mktemp("whole"),
                            synthetic_cache, *LIMITS))  # fmt: skip


def interrupt(process, sig, code: int, tmp_path):
    """Send ``sig`` to the paused run; check its exit code and its one-line resume hint; return
    (run folder, interrupted.ckpt)."""
    process.send_signal(sig)
    _, err = process.communicate(timeout=300)
    assert process.returncode == code, err[-3000:]
    (run_dir,) = (tmp_path / "runs" / "metablock").iterdir()
    interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
    assert f"resume with: make train EXP=metablock RESUME={interrupted}" in err
    return run_dir, interrupted


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 128 + signal.SIGTERM),
                                      pytest.param(signal.SIGINT, 1, marks=pytest.mark.slow)], ids=["sigterm", "ctrl-c"])
def test_a_signal_mid_epoch_saves_a_resumable_checkpoint(sig, code, uninterrupted, tmp_path, synthetic_cache):
    process, marker = start_paused_run(tmp_path, synthetic_cache, step=6)  # epoch 1, third batch
    assert marker.read_text() == "1 1"
    run_dir, interrupted = interrupt(process, sig, code, tmp_path)
    state = torch.load(interrupted, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 6

    # Resume as the message says (the run's own config.yaml supplies the data settings).
    resumed = train(["--config", str(REPO / "experiments" / "metablock.yaml"), f"--resume={interrupted}",
                     "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert resumed == run_dir
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 12
    with open(run_dir / "metrics.csv") as handle:
        epochs = [int(r["epoch"]) for r in csv.DictReader(handle) if r.get("val/auroc")]
    assert epochs == [0, 1, 2]  # every epoch exactly once
    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    wandb_id = (run_dir / "wandb_id.txt").read_text()
    assert len(parts) == 2 and all(p.name.endswith(wandb_id) for p in parts)  # one W&B run, two sessions

    from experiments.train import wandb_sync_command

    assert wandb_sync_command(run_dir) == f"wandb sync {parts[0]} {parts[1]}"

    # The resumed epoch trained the batches the interrupted one had left, on the same samples
    # with the same augmentations and the same random state: the run is the uninterrupted one.
    assert_same_run(uninterrupted, run_dir, test=False)


# A signal in validation (the case that must be held) with every `make test`; the other four
# places, in `make test-slow`.
@pytest.mark.parametrize("hook,sig,code", [
    pytest.param("train_batch_end", signal.SIGTERM, 128 + signal.SIGTERM, marks=pytest.mark.slow),
    ("validation_batch_end", signal.SIGTERM, 128 + signal.SIGTERM),
    pytest.param("validation_batch_end", signal.SIGINT, 1, marks=pytest.mark.slow),
    pytest.param("validation_end", signal.SIGTERM, 128 + signal.SIGTERM, marks=pytest.mark.slow),
    pytest.param("train_epoch_end", signal.SIGTERM, 128 + signal.SIGTERM, marks=pytest.mark.slow),
], ids=["after-last-batch", "in-validation", "ctrl-c-in-validation", "after-validation", "at-epoch-end"])
def test_a_signal_at_an_epochs_end_stops_after_it_and_resumes_into_the_same_run(hook, sig, code, uninterrupted,
                                                                                tmp_path, synthetic_cache):
    """A signal after the epoch's last training batch, during its validation or at its end stops
    the run once epoch 0 has ended (validated once, with its final weights; Lightning could not
    resume inside validation), and the resume starts epoch 1 as the uninterrupted run does."""
    process, marker = start_paused_run(tmp_path, synthetic_cache, step=4, hook=hook)  # epoch 0's last batch
    run_dir, interrupted = interrupt(process, sig, code, tmp_path)
    state = torch.load(interrupted, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4 and state["train_position"] == [1, 0]
    with open(run_dir / "metrics.csv") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle) if r.get("val/auroc")] == [0]
    train(["--config", str(REPO / "experiments" / "metablock.yaml"), f"--resume={interrupted}",
           "--trainer.enable_progress_bar=false"])  # fmt: skip
    with open(run_dir / "metrics.csv") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle) if r.get("val/auroc")] == [0, 1, 2]
    assert_same_run(uninterrupted, run_dir, test=False)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 128 + signal.SIGTERM),
                                      pytest.param(signal.SIGINT, 1, marks=pytest.mark.slow)], ids=["sigterm", "ctrl-c"])
def test_a_signal_in_the_sanity_check_stops_before_training_and_resumes_into_the_same_run(sig, code, uninterrupted,
                                                                                         tmp_path, synthetic_cache):
    """Held like one in validation: the sanity check ends, the run stops before its first batch
    with a checkpoint of the untrained model, and the resume is the uninterrupted run."""
    process, marker = start_paused_run(tmp_path, synthetic_cache, step=0, hook="sanity_check")
    assert marker.read_text() == "0 0"  # its first batch of two
    run_dir, interrupted = interrupt(process, sig, code, tmp_path)
    assert Path(f"{marker}.sanity-check-ended").exists()
    state = torch.load(interrupted, map_location="cpu", weights_only=True)
    assert (state["epoch"], state["global_step"], state["train_position"]) == (0, 0, [0, 0])
    assert "mid_epoch_metrics" not in state
    assert not (run_dir / "metrics.csv").exists() or "val/auroc" not in (run_dir / "metrics.csv").read_text()
    train(["--config", str(REPO / "experiments" / "metablock.yaml"), f"--resume={interrupted}",
           "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert_same_run(uninterrupted, run_dir, test=False)


def test_a_second_ctrl_c_in_validation_stops_at_once_and_points_at_last_ckpt(tmp_path, synthetic_cache):
    """Validation cannot be resumed from its middle: no interrupted.ckpt, and the message names
    the last finished epoch's checkpoint."""
    process, marker = start_paused_run(tmp_path, synthetic_cache, step=8, hook="validation_batch_end",
                                       until_held=False)
    process.send_signal(signal.SIGINT)
    time.sleep(1.0)  # the first is held (the pause goes on); the second stops the run
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1, err[-3000:]
    (run_dir,) = (tmp_path / "runs" / "metablock").iterdir()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert "stopping once this epoch's validation has finished" in err
    assert f"during validation, which cannot be resumed; resume from the previous epoch's end with: " \
           f"make train EXP=metablock RESUME={last}" in err
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0


def test_a_second_ctrl_c_in_the_sanity_check_stops_at_once_and_leaves_no_run(tmp_path, synthetic_cache):
    """Nothing was trained and the sanity check cannot be resumed from its middle: no checkpoint,
    a message that says so, and (as for any run that fails before training) no run folder."""
    process, marker = start_paused_run(tmp_path, synthetic_cache, step=0, hook="sanity_check", until_held=False)
    process.send_signal(signal.SIGINT)
    time.sleep(1.0)  # the first is held (the pause goes on); the second stops the run
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1, err[-3000:]
    assert "Ctrl-C: stopping once the sanity check has finished (press again to stop now)" in err
    assert "interrupted (KeyboardInterrupt) during the sanity check, which cannot be resumed; " \
           "nothing to resume from: start the run again" in err
    assert not Path(f"{marker}.sanity-check-ended").exists()
    assert not any((tmp_path / "runs" / "metablock").glob("*"))


def test_a_sigkill_loses_at_most_the_current_epoch(uninterrupted, tmp_path, synthetic_cache):
    """SIGKILL cannot be caught: the run resumes from the last finished epoch's last.ckpt, and
    still becomes the uninterrupted run."""
    process, _ = start_paused_run(tmp_path, synthetic_cache, step=6)  # epoch 1, third batch
    os.killpg(process.pid, signal.SIGKILL)  # the job's whole process tree, W&B's service included
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    (run_dir,) = (tmp_path / "runs" / "metablock").iterdir()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()
    train(["--config", str(REPO / "experiments" / "metablock.yaml"), f"--resume={last}",
           "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert_same_run(uninterrupted, run_dir, test=False)


def test_a_truncated_checkpoint_is_named_and_changes_nothing(tmp_path, synthetic_cache):
    from lightning_modules.modules.loading import CheckpointError

    run_dir = train(quick_args(REPO / "experiments" / "metablock.yaml", tmp_path, synthetic_cache,
                               "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                               "--trainer.limit_val_batches=1", "--run.test=false", "--run.wandb=false"))  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    broken = run_dir / "checkpoints" / "copied.ckpt"
    broken.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=f"--resume: {broken} is not a readable checkpoint"):
        train(["--config", str(REPO / "experiments" / "metablock.yaml"), f"--resume={broken}"])
    from experiments.predict import predict

    with pytest.raises(CheckpointError, match=f"{broken} is not a readable checkpoint"):
        predict(str(broken), split="test", num_workers=0, accelerator="cpu")
    assert {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_run_that_fails_before_training_leaves_no_folder(tmp_path, synthetic_cache):
    from datamodules.records import DatasetError
    from experiments.net_options import UnknownOptionError

    config = REPO / "experiments" / "metablock.yaml"
    with pytest.raises(DatasetError):
        train(quick_args(config, tmp_path, synthetic_cache, "--data.dataset=pad_ufes20",
                         f"--data.data_dir={tmp_path / 'nowhere'}", "--data.source_options=null"))
    with pytest.raises(UnknownOptionError, match=r"--trainer.max_epoch; did you mean --trainer.max_epochs"):
        train(quick_args(config, tmp_path, synthetic_cache, "--trainer.max_epoch=1"))  # no abbreviations
    with pytest.raises(UnknownOptionError, match=r"no option 'backbon'; did you mean 'backbone'\?"):
        train(quick_args(config, tmp_path, synthetic_cache, "--model.init_args.backbon=resnet18"))
    assert not any((tmp_path / "metablock").glob("*"))  # the parent may stay; no run folder in it
