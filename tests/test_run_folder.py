"""The run-folder policy and the resume rewriting, without training (experiments/run_folder.py,
experiments/resume.py)."""

from __future__ import annotations

import pytest

from experiments.cli import BASE_CONFIG
from experiments.resume import older_layout, resumed_run_config, with_run_config
from experiments.run_folder import (
    RUN_DIR_ENV,
    discard_if_unused,
    external_job_id,
    resolve_run_dir,
    share_with_workers,
    stop_sharing,
)

LAUNCH_ENV = ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NTASKS", "WORLD_SIZE", "LOCAL_RANK",
              RUN_DIR_ENV)  # fmt: skip


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)


def test_job_ids_of_external_launchers(monkeypatch):
    assert external_job_id() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv-id: the same for every job
    assert external_job_id() is None
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    assert external_job_id() == "812"
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    assert external_job_id() == "812.3"  # steps of one allocation are separate runs
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "sweep7")
    assert external_job_id() == "sweep7"


def test_new_folders_are_timestamped_and_never_reused(tmp_path):
    first, created = resolve_run_dir(str(tmp_path), "metablock", None, None, 3)
    second, _ = resolve_run_dir(str(tmp_path), "metablock", None, None, 3)
    assert created and first.is_dir() and first.parent == tmp_path / "metablock"
    assert first.name.endswith("-s3") and second != first


def test_ranks_of_one_job_share_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    single, _ = resolve_run_dir(str(tmp_path), "exp", None, None, 1)
    assert single.name != "job-812-s1"  # a one-process job keeps the timestamped name
    monkeypatch.setenv("WORLD_SIZE", "4")
    a, created_a = resolve_run_dir(str(tmp_path), "exp", None, None, 1)
    b, created_b = resolve_run_dir(str(tmp_path), "exp", None, None, 1)
    assert a == b == tmp_path / "exp" / "job-812-s1" and created_a and not created_b


def test_ddp_workers_join_the_launching_process_folder(tmp_path, monkeypatch):
    run_dir, _ = resolve_run_dir(str(tmp_path), "exp", None, None, 0)
    share_with_workers(run_dir)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_run_dir(str(tmp_path), "exp", None, None, 0) == (run_dir, False)
    stop_sharing()  # a worker leaves the hand-off alone
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_run_dir(str(tmp_path), "exp", None, None, 0)[0] != run_dir  # the launcher starts afresh
    stop_sharing()
    assert RUN_DIR_ENV not in __import__("os").environ


def test_explicit_and_resumed_folders(tmp_path):
    fixed = tmp_path / "fixed"
    assert resolve_run_dir(str(tmp_path), "exp", str(fixed), None, 0) == (fixed, True)
    (fixed / "checkpoints").mkdir()
    (fixed / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="already holds a run"):
        resolve_run_dir(str(tmp_path), "exp", str(fixed), None, 0)
    assert resolve_run_dir(str(tmp_path), "exp", None, str(fixed / "checkpoints" / "last.ckpt"), 0) == (fixed, False)


def test_only_an_unused_new_folder_is_discarded(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    discard_if_unused(run_dir, created=False)
    assert run_dir.is_dir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    discard_if_unused(run_dir, created=True)
    assert run_dir.is_dir()  # a checkpoint is worth keeping
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    discard_if_unused(run_dir, created=True)
    assert not run_dir.exists()


def test_the_run_config_goes_between_the_configs_and_the_overrides(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text("run:\n  drop_callbacks: []\n")
    args = ["--config", "a.yaml", "--trainer.max_epochs=4", "--config=b.yaml", "--resume", "x.ckpt"]
    assert with_run_config(args, saved, BASE_CONFIG) == [
        "--config", "a.yaml", "--config=b.yaml", "--config", str(saved), "--trainer.max_epochs=4",
        "--resume", "x.ckpt"]  # fmt: skip
    assert resumed_run_config(["--config", "a.yaml"]) is None
    with pytest.raises(FileNotFoundError, match="--resume: .*Nothing in its run folder was changed"):
        resumed_run_config([f"--resume={tmp_path / 'missing.ckpt'}"])


def test_a_run_saved_before_callbacks_were_listed_resumes_with_the_defaults(tmp_path):
    """Its config.yaml has ``trainer.callbacks: null`` or ProtoPNet's push alone, which would replace
    base.yaml's list: the defaults come back, the push's schedule becomes the module's."""
    import json

    import yaml

    defaults = yaml.safe_load(BASE_CONFIG.read_text())["trainer"]["callbacks"]
    old = tmp_path / "config.yaml"
    old.write_text(yaml.safe_dump({"run": {"name": "metablock"}, "trainer": {"callbacks": None}}))
    assert older_layout(old, BASE_CONFIG) == [f"--trainer.callbacks={json.dumps(defaults)}"]
    extra = {"class_path": "tests.test_resume.StopBeforeEpoch", "init_args": {"epoch": 2}}
    push = {"class_path": "lightning_modules.callbacks.prototype_push.PrototypePush",
            "init_args": {"push_start": 6, "push_every": 6, "push_at_end": True, "pictures": True}}
    old.write_text(yaml.safe_dump({"run": {"name": "protopnet"}, "trainer": {"callbacks": [push, extra]}}))
    assert older_layout(old, BASE_CONFIG) == [f"--trainer.callbacks={json.dumps(defaults + [extra])}",
                                 "--model.init_args.push_start=6", "--model.init_args.push_every=6",
                                 "--model.init_args.push_at_end=true"]  # fmt: skip
    old.write_text(yaml.safe_dump({"run": {"name": "x", "drop_callbacks": []}, "trainer": {"callbacks": [extra]}}))
    assert older_layout(old, BASE_CONFIG) == []  # saved by this version: its list is the run's whole list
