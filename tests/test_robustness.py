"""Nothing lost, nothing misleading: a diverging run, a full disk, two runs in one folder, errors
before the run starts (docs/robustness.md)."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.atomic_files import DiskFullError, write_json
from datamodules.entry_point import run
from experiments.train import main as train
from lightning_modules.errors import NonFiniteError
from tests.test_experiments import REPO, quick_args
from tests.test_interruption import run_environment

METABLOCK = REPO / "experiments" / "metablock.yaml"
SHORT = ("--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
         "--run.test=false", "--run.wandb=false")  # fmt: skip


def callback(name: str, **init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"tests.fault_helpers.{name}", "init_args": init_args})


def last_lines(text: str, n: int = 1) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-n:]


def all_finite(checkpoint: Path) -> bool:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_cache):
    """One epoch of one batch (`--trainer.limit_train_batches=1`: an integer is a number of
    batches), and the warnings that a fresh run raised."""
    root = tmp_path_factory.mktemp("trained")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_dir = train(quick_args(METABLOCK, root, synthetic_cache, "--trainer.max_epochs=1",
                                   "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
                                   "--run.test=false", "--run.wandb=false"))  # fmt: skip
    return run_dir, [str(w.message) for w in caught]


# -- a diverging run --------------------------------------------------------------------------------

def test_the_issues_diverging_run_stops_and_leaves_no_nonfinite_model(tmp_path, synthetic_cache):
    """The issue's case, as a user runs it: a learning rate of 1e6. Exit code 1, the last line says
    the run diverged and where; no resume advice; no checkpoint with non-finite weights, no test
    scores from NaN probabilities."""
    args = quick_args(METABLOCK, tmp_path, synthetic_cache, "--trainer.max_epochs=2", "--trainer.limit_train_batches=4",
                      "--trainer.limit_val_batches=2", "--run.wandb=false",
                      "--model.init_args.optimizer.init_args.lr=1e6")  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, capture_output=True, text=True,
                          env=run_environment())  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    (line,) = last_lines(done.stderr)
    assert line.startswith("error: the run diverged: ") and "NaN" in line and "start a new run" in line
    assert "RESUME=" not in done.stderr and "resume with" not in done.stderr and "Traceback" not in done.stderr
    (run_dir,) = (tmp_path / "metablock").iterdir()  # training had started: its folder is kept
    assert (run_dir / "metrics.csv").is_file()
    assert all(all_finite(c) for c in run_dir.glob("checkpoints/*.ckpt"))
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "predictions.csv").exists()


def test_a_nan_loss_names_its_step_and_stops_before_any_checkpoint(tmp_path, synthetic_cache):
    with pytest.raises(NonFiniteError, match=r"the training loss is NaN at training step 2 \(epoch 0\)"):
        train(quick_args(METABLOCK, tmp_path, synthetic_cache, *SHORT, callback("PoisonAtStep", step=2)))
    (run_dir,) = (tmp_path / "metablock").iterdir()
    assert not list(run_dir.glob("checkpoints/*.ckpt"))  # neither best, last nor interrupted


@pytest.mark.slow
@pytest.mark.parametrize("config,terms", [("protopnet", "crs_ent = nan, clst = "), ("abe", "contrastive = nan")])
def test_a_nan_loss_names_its_terms(config, terms, tmp_path, synthetic_cache):
    extra = ("--data.pk_batches=[2,4]",) if config == "abe" else ()
    with pytest.raises(NonFiniteError, match="at training step 1 ") as info:
        train(quick_args(REPO / "experiments" / f"{config}.yaml", tmp_path, synthetic_cache, *SHORT, *extra,
                         callback("PoisonAtStep", step=1)))  # fmt: skip
    assert terms in str(info.value)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_the_first_nonfinite_step_is_kept_on_the_device_until_read(device):
    from lightning_modules.training.finite_guard import FiniteGuard

    guard = FiniteGuard()
    value = lambda x: torch.tensor(x, device=device)  # noqa: E731
    nan, inf = value(float("nan")), value(float("inf"))
    guard.record_training(0, value(1.0), {"ce": value(1.0)})
    guard.check_training(str)  # all finite: nothing to say
    guard.record_training(1, inf, {"ce": inf, "reg": value(0.5)})
    guard.record_training(2, nan, {"ce": nan, "reg": nan})  # later steps do not replace the first
    with pytest.raises(NonFiniteError, match=r"the training loss is \+inf at step 1 \(non-finite term: ce\); "
                                             r"the loss terms then: loss = inf, ce = inf, reg = 0.5"):
        guard.check_training(lambda step: f"step {step}")
    guard.record_outputs("val", 3, {"probabilities": value([[0.5, 0.5], [float("nan"), 0.2]])})
    with pytest.raises(NonFiniteError, match=r"the model of epoch 4 gives probabilities that are NaN or infinite on "
                                             r"validation batch 3 \(probabilities = nan\)"):
        guard.check_outputs("val", epoch=4)
    guard.check_outputs("val", epoch=5)  # the record went with the epoch


def test_nonfinite_weights_are_never_checkpointed_and_no_score_comes_from_nan():
    from lightning_modules.metrics.classification import classification_scores
    from lightning_modules.training.finite_guard import check_weights

    check_weights({"w": torch.ones(3), "steps": torch.tensor(4)}, "fine")
    with pytest.raises(NonFiniteError, match=r"the checkpoint of epoch 3: the weights are NaN or infinite \(e.g. net.b\)"):
        check_weights({"net.a": torch.ones(3), "net.b": torch.tensor([1.0, float("inf")])}, "the checkpoint of epoch 3")
    with pytest.raises(NonFiniteError, match="1 of 2 predictions have NaN"):
        classification_scores(np.array([[0.3, 0.7], [np.nan, np.nan]]), np.array([1, 0]), ["a", "b"])


def test_metrics_json_is_always_strict_json(tmp_path):
    path = write_json(tmp_path / "metrics.json", {"auroc": float("nan"), "loss": np.float32("inf"),
                                                  "per_class": {"a": np.array([0.5, np.nan])}, "n": np.int64(3),
                                                  "t": torch.tensor([1.0, float("-inf")])})  # fmt: skip
    strict = json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"bare {token} in JSON"))
    assert strict == {"auroc": None, "loss": None, "per_class": {"a": [0.5, None]}, "n": 3, "t": [1.0, None]}


def test_predict_refuses_nonfinite_checkpoints_and_says_what_it_used(trained_run, tmp_path, capsys):
    from experiments.predict import predict

    run_dir, _ = trained_run
    good = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    name = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and k.endswith("weight"))
    checkpoint["state_dict"][name] = torch.full_like(checkpoint["state_dict"][name], float("nan"))
    torch.save(checkpoint, nan_weights := tmp_path / "nan.ckpt")
    with pytest.raises(NonFiniteError, match=f"checkpoint {nan_weights}: the weights are NaN or infinite"):
        predict(str(nan_weights), split="test", num_workers=0, accelerator="cpu")

    checkpoint = torch.load(good, map_location="cpu", weights_only=True)  # finite weights, infinite outputs
    state = checkpoint["state_dict"]
    head = [k for k, v in state.items() if k.startswith("net.") and v.dim() == 2 and v.shape[0] == 6][-1]
    state[head] = torch.full_like(state[head], 3e38)  # the logits overflow to +inf: NaN probabilities
    torch.save(checkpoint, overflowing := tmp_path / "overflow.ckpt")
    with pytest.raises(NonFiniteError, match=f"checkpoint {overflowing} gives NaN or infinite probabilities"):
        predict([str(good), str(overflowing)], split="test", num_workers=0, accelerator="cpu", out=str(tmp_path / "x.csv"))
    assert not (tmp_path / "x.csv").exists()

    capsys.readouterr()
    out = predict([str(good), str(good)], split="test", num_workers=0, accelerator="cpu", tta=2,
                  out=str(tmp_path / "ensemble.csv"))  # fmt: skip
    printed = capsys.readouterr().out
    assert "with an ensemble of 2 checkpoints (probabilities averaged), 2 test-time views of each image averaged; " \
           f"wrote {out}" in printed


# -- a full disk ------------------------------------------------------------------------------------

def no_space_after(monkeypatch, n_saves: int) -> None:
    """Checkpoint writes after the first ``n_saves`` fail as torch's zip writer fails on a full disk:
    a RuntimeError raised while handling the OSError(ENOSPC)."""
    from lightning_modules.utils import atomic_io

    saves, real_save = [], torch.save

    def save(obj, handle):
        saves.append(handle)
        if len(saves) <= n_saves:
            return real_save(obj, handle)
        handle.write(b"\0" * 1000)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(atomic_io.torch, "save", save)


def test_a_full_disk_keeps_the_run_and_says_which_checkpoints_are_intact(tmp_path, synthetic_cache, monkeypatch, capsys):
    no_space_after(monkeypatch, 2)  # epoch 0's best and last fit, epoch 1's checkpoint does not
    args = quick_args(METABLOCK, tmp_path, synthetic_cache, "--trainer.max_epochs=2", "--trainer.limit_train_batches=2",
                      "--trainer.limit_val_batches=1", "--run.wandb=false", "--checkpoint.save_top_k=-1")  # fmt: skip
    with pytest.raises(SystemExit) as exit_code:
        run(train, args)
    assert exit_code.value.code == 1
    (run_dir,) = (tmp_path / "metablock").iterdir()
    error, advice = last_lines(capsys.readouterr().err, 2)
    folder = run_dir / "checkpoints"
    assert error.startswith(f"error: the disk is full: writing {folder / 'best-epoch001.ckpt'} needed ")
    assert re.search(r"needed [0-9.]+ MB, [0-9.]+ [KMG]?B free on its filesystem; the file was not written", error)
    assert error.endswith(f"intact checkpoints in {folder}: best-epoch000.ckpt, last.ckpt")
    assert advice == f"free some space, then resume from the previous epoch's end with: make train EXP=metablock " \
                     f"RESUME={folder / 'last.ckpt'}"
    assert sorted(p.name for p in folder.iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]  # no temp file left
    assert all_finite(folder / "last.ckpt") and (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()


def test_no_space_from_any_writer_is_recognised_and_named(tmp_path):
    from datamodules.atomic_files import out_of_space

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.csv"))
        except OSError:
            raise RuntimeError("a library's wrapper")
    except RuntimeError as err:
        wrapped = err
    assert out_of_space(wrapped) and not out_of_space(RuntimeError("other")) and out_of_space(OSError(errno.EDQUOT, "q"))
    message = str(DiskFullError.from_error(wrapped, tmp_path))
    assert re.fullmatch(f"the disk is full: writing {tmp_path / 'metrics.csv'}; [0-9.]+ [KMG]?B free on its filesystem",
                        message), message


@pytest.fixture
def small_disk(tmp_path):
    """A 45 MB filesystem (tmpfs; needs the right to mount, else the test is skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=45m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_disk_too_small_for_the_first_checkpoint_keeps_the_run_folder(small_disk, synthetic_cache):
    args = quick_args(METABLOCK, small_disk, synthetic_cache, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                      "--trainer.limit_val_batches=1", "--run.test=false")  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, capture_output=True, text=True,
                          env=run_environment())  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    (run_dir,) = (small_disk / "metablock").iterdir()
    error, advice = last_lines(done.stderr, 2)
    assert error.startswith(f"error: the disk is full: writing {run_dir / 'checkpoints'}") and "no checkpoint in" in error
    assert advice == "free some space and start the run again"
    for kept in ("config.yaml", "metrics.csv", "wandb"):
        assert (run_dir / kept).exists(), kept


# -- two runs in one folder -------------------------------------------------------------------------

def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s run lock (as a live run does)."""
    code = ("import sys, time; from experiments.run_lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_run_folder_in_use_is_refused_with_the_other_process(trained_run, tmp_path, synthetic_cache):
    from experiments.run_lock import RunFolderBusy, RunLock

    run_dir, _ = trained_run
    RunLock(run_dir).acquire().release()  # the finished run let go of its folder
    holder = hold_lock(run_dir)
    try:
        with pytest.raises(RunFolderBusy, match=f"{run_dir} is in use by process {holder.pid} on "):
            train(["--config", str(METABLOCK), f"--resume={run_dir / 'checkpoints' / 'last.ckpt'}", "--run.wandb=false"])
        fresh = tmp_path / "fixed"
        fresh.mkdir()
        other = hold_lock(fresh)
        try:
            with pytest.raises(RunFolderBusy, match=f"process {other.pid} "):
                train(quick_args(METABLOCK, tmp_path, synthetic_cache, *SHORT, f"--run.dir={fresh}"))
            assert fresh.is_dir() and [p.name for p in fresh.iterdir()] == [".run.lock"]  # the other run's, untouched
        finally:
            other.kill()
            other.wait()
    finally:
        holder.kill()
        holder.wait()
    RunLock(run_dir).acquire().release()  # a dead holder's lock is gone with it


def test_only_global_rank_zero_locks(monkeypatch):
    from experiments.run_folder import is_global_zero_process

    for name in ("LOCAL_RANK", "RANK", "SLURM_PROCID", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert is_global_zero_process()
    cases = [({"LOCAL_RANK": "1"}, False),  # a worker of Lightning's launcher (it inherits the rest)
             ({"LOCAL_RANK": "1", "SLURM_PROCID": "0"}, False),
             ({"LOCAL_RANK": "0", "RANK": "4"}, False), ({"LOCAL_RANK": "0", "RANK": "0"}, True),  # torchrun
             ({"SLURM_PROCID": "2"}, False), ({"NODE_RANK": "1"}, False)]  # fmt: skip
    for env, expected in cases:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert is_global_zero_process() == expected, env


# -- errors before the run starts ---------------------------------------------------------------------

@pytest.mark.parametrize("option,message", [
    ("--data.batch_size=-1", "--data.batch_size=-1: must be an integer >= 1"),
    ("--data.image_size=0", "--data.image_size=0: must be an integer >= 1"),
    ("--data.num_workers=-2", "--data.num_workers=-2: must be an integer >= 0"),
    ("--data.fold=5", "--data.fold=5: must be an integer >= 0 and <= 4"),
    ("--model.init_args.loss=hinge", "--model.init_args.loss='hinge': must be one of 'ce', 'focal'"),
    ("--model.init_args.optimizer.init_args.lr=-1", "--model.init_args.optimizer: Invalid learning rate: -1.0"),
])  # fmt: skip
def test_bad_arguments_are_refused_before_the_run_folder_exists(option, message, tmp_path, synthetic_cache, capsys):
    with pytest.raises(SystemExit):
        run(train, quick_args(METABLOCK, tmp_path, synthetic_cache, *SHORT, option))
    err = capsys.readouterr().err
    assert last_lines(err) == [f"error: {message}"] and "Traceback" not in err
    assert not (tmp_path / "metablock").exists()


def test_debug_shows_the_traceback_and_still_ends_with_the_message(tmp_path, synthetic_cache, capsys, monkeypatch):
    monkeypatch.delenv("DERMATTN_DEBUG", raising=False)
    with pytest.raises(SystemExit):
        run(train, [*quick_args(METABLOCK, tmp_path, synthetic_cache, *SHORT, "--data.image_size=0"), "--debug"])
    err = capsys.readouterr().err
    assert "Traceback" in err and last_lines(err) == ["error: --data.image_size=0: must be an integer >= 1"]
    assert os.environ.pop("DERMATTN_DEBUG") == "1"  # handed to the runs a tool starts
    from experiments.predict import main as predict_main

    with pytest.raises(SystemExit):
        run(predict_main, ["--ckpt", str(tmp_path / "none.ckpt")])
    assert last_lines(capsys.readouterr().err) == [f"error: checkpoint {tmp_path / 'none.ckpt'} does not exist"]


def test_an_integer_batch_limit_is_a_number_of_batches(trained_run, tmp_path, synthetic_cache):
    from experiments.cli import DermCLI

    run_dir, caught = trained_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 1  # --trainer.limit_train_batches=1: one batch, not the whole epoch
    config = tmp_path / "limits.yaml"
    config.write_text("trainer:\n  limit_test_batches: 1\n  limit_predict_batches: 0.5\n")
    cli = DermCLI(args=quick_args(METABLOCK, tmp_path, synthetic_cache, "--run.wandb=false", "--config", str(config),
                                  "--trainer.limit_train_batches=1.0", "--trainer.limit_val_batches=3"))  # fmt: skip
    limits = (cli.trainer.limit_train_batches, cli.trainer.limit_val_batches, cli.trainer.limit_test_batches,
              cli.trainer.limit_predict_batches)  # fmt: skip
    assert limits == (1.0, 3, 1, 0.5) and [type(v) for v in limits] == [float, int, int, float]
    cli.end_run()
    # A fresh run resumes from nothing: Lightning has nothing to look for and says nothing about it.
    assert not [w for w in caught if "ckpt_path" in w], caught


def test_a_failure_before_training_leaves_no_folder_and_no_resume_advice(tmp_path, synthetic_cache, synthetic_dir,
                                                                         capsys):
    with pytest.raises(SystemExit):
        run(train, quick_args(METABLOCK, tmp_path, synthetic_cache, *SHORT, callback("FailAtStep", step=0)))
    err = capsys.readouterr().err
    assert last_lines(err) == ["error: RuntimeError: injected crash at step 0"] and "RESUME=" not in err
    assert not list((tmp_path / "metablock").iterdir())

    copy = tmp_path / "pad"
    shutil.copytree(synthetic_dir, copy)
    broken = sorted((copy / "images").iterdir())[0]
    broken.write_bytes(b"not a png")
    with pytest.raises(SystemExit):
        run(train, quick_args(METABLOCK, tmp_path, synthetic_cache, *SHORT, "--data.dataset=pad_ufes20",
                              f"--data.data_dir={copy}", "--data.source_options=null", "--data.verify_images=true"))
    err = capsys.readouterr().err
    message = err[err.rindex("\nerror: "):]  # the error and the list of unreadable files under it, last
    assert "1 unreadable image" in message and broken.name in message
    assert "RESUME=" not in err and "Traceback" not in err
    assert not list((tmp_path / "metablock").iterdir())


def test_a_crash_mid_training_ends_with_the_resume_command(tmp_path, synthetic_cache, capsys):
    with pytest.raises(SystemExit):
        run(train, quick_args(METABLOCK, tmp_path, synthetic_cache, *SHORT, callback("FailAtStep", step=2)))
    (run_dir,) = (tmp_path / "metablock").iterdir()
    interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
    err = capsys.readouterr().err
    assert "Traceback" in err  # not an error of the user's: the traceback is for the bug report
    assert last_lines(err, 2) == ["error: RuntimeError: injected crash at step 2",
                                  f"resume with: make train EXP=metablock RESUME={interrupted}"]
    assert interrupted.is_file()


# -- long work says what it is doing -------------------------------------------------------------------

def test_push_progress_follows_the_trainers_progress_bar():
    from lightning.pytorch.callbacks import TQDMProgressBar

    from lightning_modules.protopnet.projection import fit_last_layer
    from lightning_modules.utils.progress import progress

    class Trainer:
        is_global_zero = True
        progress_bar_callback = None

    items = [1, 2, 3]
    assert progress(Trainer(), items, "push") is items  # --trainer.enable_progress_bar=false
    Trainer.progress_bar_callback = TQDMProgressBar()
    bar = progress(Trainer(), items, "push 1/4: nearest patches")
    assert list(bar) == items and bar.total == 3 and bar.desc.startswith("push 1/4")
    Trainer.is_global_zero = False
    assert progress(Trainer(), items, "push") is items  # one bar, from rank 0

    seen = []
    layer = torch.nn.Linear(4, 2, bias=False)
    fit_last_layer(layer, torch.randn(8, 4), torch.randint(0, 2, (8,)), torch.nn.CrossEntropyLoss(), 0.0, None,
                   epochs=3, optimizer=torch.optim.Adam(layer.parameters(), lr=0.01), batch_size=4, seed=0,
                   progress=lambda passes: (seen.append(p) or p for p in passes))
    assert seen == [0, 1, 2]


def test_a_failed_run_of_a_multi_run_tool_is_one_line(tmp_path, monkeypatch, capsys):
    from experiments import runs

    def failing(args, check, env):  # the run printed its own error and exited 1
        raise subprocess.CalledProcessError(1, args)

    monkeypatch.setattr(runs.subprocess, "run", failing)
    with pytest.raises(SystemExit):
        run(lambda argv: runs.train_once(tmp_path / "fold0", ["--config", "experiments/metablock.yaml"]), [])
    err = capsys.readouterr().err
    assert last_lines(err) == [f"error: the training run in {tmp_path / 'fold0'} failed (exit code 1); its error is "
                               "above. Runs that finished are kept: the same command, once the cause is fixed, "
                               "continues from there"] and "Traceback" not in err
