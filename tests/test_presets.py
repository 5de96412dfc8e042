"""The paper presets build and run (one batch each, on the synthetic data, no downloads), so they
never rot."""

from __future__ import annotations

import json

import pytest

from experiments.train import main as train
from tests.test_experiments import REPO, quick_args

PRESETS = sorted((REPO / "experiments" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("config", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_paper_preset_runs_one_batch(config, tmp_path, synthetic_cache):
    extra = ["--data.dataset=synthetic", "--trainer.fast_dev_run=true", "--model.init_args.pretrained=false",
             "--data.batch_size=8"]  # fmt: skip
    if "abe" in config.stem:
        extra.append("--data.pk_batches=[6, 2]")  # the synthetic data has 6 classes
    header = config.read_text().splitlines()[:12]
    assert any("reported" in line for line in header) and any("not run to completion" in line for line in header)
    run_dir = train(quick_args(config, tmp_path, synthetic_cache, *extra))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["n_images"] > 0 and 0.0 <= metrics["test"]["bacc"] <= 1.0
