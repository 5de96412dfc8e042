"""Same seed, same run: two fresh runs of every experiment config log identical numbers."""

from __future__ import annotations

import json

import pytest

from experiments.train import main as train
from tests.test_experiments import EXPERIMENTS, quick_args


#: Checked by every `make test`; the other experiments' pairs of runs (the slowest) run in `make test-slow`.
FAST = ("metablock", "soft_attention")


@pytest.mark.parametrize("config", [p if p.stem in FAST else pytest.param(p, marks=pytest.mark.slow)
                                    for p in EXPERIMENTS], ids=[p.stem for p in EXPERIMENTS])
def test_two_fresh_runs_with_one_seed_are_identical(config, tmp_path, synthetic_cache):
    def run(name: str):
        run_dir = train(quick_args(config, tmp_path / name, synthetic_cache, "--trainer.max_epochs=2",
                                   "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                                   "--run.wandb=false"))  # fmt: skip
        return (run_dir / "metrics.csv").read_text(), json.loads((run_dir / "metrics.json").read_text())["test"]

    (csv_a, test_a), (csv_b, test_b) = run("a"), run("b")
    assert csv_a.count("\n") > 2 and csv_a == csv_b
    assert test_a == test_b
