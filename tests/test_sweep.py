"""The sweep reuses a finished run only when it was made with exactly the same arguments."""

from __future__ import annotations

import json
from pathlib import Path

from experiments import sweep


def test_sweep_reuses_only_runs_with_the_same_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_run(args, check, env):  # a "training run" that writes its metrics.json
        calls.append(args)
        run_dir = Path(next(a for a in args if a.startswith("--run.dir=")).split("=", 1)[1])
        (run_dir / "metrics.json").write_text(json.dumps({"test": {"auroc": 0.5 + 0.1 * len(calls)}}))

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    first = sweep.run_one("experiments/abe.yaml", ["--model.init_args.lambda_div=1"], "abe", 1, "abe", [])
    again = sweep.run_one("experiments/abe.yaml", ["--model.init_args.lambda_div=1"], "abe", 1, "abe", [])
    assert len(calls) == 1 and again["test"] == first["test"]
    # the same label with another definition (or other extra overrides) is a different run
    changed = sweep.run_one("experiments/abe.yaml", ["--model.init_args.lambda_div=0.5"], "abe", 1, "abe", [])
    assert len(calls) == 2 and changed["test"]["auroc"] == 0.7
    sweep.run_one("experiments/abe.yaml", ["--model.init_args.lambda_div=0.5"], "abe", 1, "abe", ["--trainer.max_epochs=2"])
    assert len(calls) == 3
