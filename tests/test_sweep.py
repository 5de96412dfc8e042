"""The sweep reuses a finished run only when it was made with exactly the same arguments."""

from __future__ import annotations

import json
from pathlib import Path

from experiments import runs, sweep


def test_sweep_reuses_only_runs_with_the_same_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_run(args, check, env):  # a "training run" that writes its metrics.json
        calls.append(args)
        run_dir = Path(next(a for a in args if a.startswith("--run.dir=")).split("=", 1)[1])
        (run_dir / "metrics.json").write_text(json.dumps({"test": {"auroc": 0.5 + 0.1 * len(calls)}}))

    monkeypatch.setattr(runs.subprocess, "run", fake_run)
    first = sweep.run_one("experiments/abe.yaml", ["--model.init_args.lambda_div=1"], "abe", 1, "abe", [])
    again = sweep.run_one("experiments/abe.yaml", ["--model.init_args.lambda_div=1"], "abe", 1, "abe", [])
    assert len(calls) == 1 and again["test"] == first["test"]
    # the same label with another definition (or other extra overrides) is a different run
    changed = sweep.run_one("experiments/abe.yaml", ["--model.init_args.lambda_div=0.5"], "abe", 1, "abe", [])
    assert len(calls) == 2 and changed["test"]["auroc"] == 0.7
    sweep.run_one("experiments/abe.yaml", ["--model.init_args.lambda_div=0.5"], "abe", 1, "abe", ["--trainer.max_epochs=2"])
    assert len(calls) == 3


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def interrupted(args, check, env):  # dies after writing its first checkpoint
        calls.append(args)
        run_dir = Path(next(a for a in args if a.startswith("--run.dir=")).split("=", 1)[1])
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"state")
        raise RuntimeError("preempted")

    monkeypatch.setattr(runs.subprocess, "run", interrupted)
    run_dir = tmp_path / "runs" / "x"
    try:
        runs.train_once(run_dir, ["--config", "experiments/abe.yaml"])
    except RuntimeError:
        pass

    def finishing(args, check, env):
        calls.append(args)
        (run_dir / "metrics.json").write_text(json.dumps({"test": {"auroc": 0.9}}))

    monkeypatch.setattr(runs.subprocess, "run", finishing)
    assert runs.train_once(run_dir, ["--config", "experiments/abe.yaml"])["test"]["auroc"] == 0.9
    assert f"--resume={run_dir / 'checkpoints' / 'last.ckpt'}" in calls[1]
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"state"  # continued, not wiped
