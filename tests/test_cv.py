"""Cross-validation: every fold trained once, the table, and out-of-fold predictions covering
every image exactly once."""

from __future__ import annotations

import csv
import json

import pytest

from experiments import cv, runs
from tests.conftest import SMALL_SYNTHETIC
from tests.test_experiments import REPO


@pytest.mark.slow  # five short training runs in subprocesses: about a minute
def test_cv_trains_each_fold_once_and_tabulates(tmp_path, synthetic_cache, monkeypatch):
    monkeypatch.chdir(REPO)
    overrides = ["--", f"--run.root={tmp_path}", f"--data.data_dir={synthetic_cache}",
                 f"--data.source_options={json.dumps(SMALL_SYNTHETIC)}", "--data.image_size=32", "--data.batch_size=16",
                 "--data.num_workers=0", "--trainer.enable_model_summary=false", "--trainer.max_epochs=1",
                 "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--run.wandb=false"]  # fmt: skip
    out = tmp_path / "metablock-cv" / "first"
    cv.main(["--config", "experiments/metablock.yaml", "--dir", str(out), *overrides])
    summary = json.loads((out / "summary.json").read_text())
    folds = summary["folds"]
    assert summary["n_folds"] == 5 and [f["fold"] for f in folds] == list(range(5))
    aurocs = [f["test"]["auroc"] for f in folds]
    assert summary["metrics"]["auroc"]["mean"] == pytest.approx(sum(aurocs) / 5)
    assert summary["metrics"]["auroc"]["runs"] == aurocs
    with open(out / "oof_predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    from datamodules.lesion_datamodule import LesionDataModule

    everything = LesionDataModule(data_dir=str(synthetic_cache), source_options=SMALL_SYNTHETIC).records("all")
    assert sorted(r["image_id"] for r in rows) == sorted(r.image_id for r in everything)  # each image once
    assert summary["out_of_fold"]["n_images"] == len(everything)
    assert "| **mean ± std** |" in (out / "summary.md").read_text()
    # The pooled out-of-fold estimate with its patient-bootstrap interval, from files that carry
    # each image's group and metadata, and operating points from the folds' validation predictions.
    pooled = summary["out_of_fold"]
    low, high = pooled["auroc_ci"]
    assert low <= pooled["auroc"] <= high and pooled["n_groups"] == len({r.group for r in everything})
    assert {"group", "fitspatrick", "age"} <= set(rows[0]) and (out / "oof_val_predictions.csv").is_file()
    assert pooled["calibration"]["temperature_scaling"]["fitted_on"] == "val"
    assert "| **pooled out-of-fold [95 % CI]** |" in (out / "summary.md").read_text()
    assert (out / "subgroups.csv").is_file() and (out / "subgroups.md").is_file()
    config = (out / "fold3" / "config.yaml").read_text()
    assert "fold: 3" in config and "wandb_group: metablock-cv-first" in config and "wandb_job_type: cv" in config

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(runs.subprocess, "run", no_training)
    cv.main(["--config", "experiments/metablock.yaml", "--dir", str(out), *overrides])  # resumes: nothing to do


def test_cv_refuses_an_official_split_before_training(tmp_path, monkeypatch):
    """An official split is one partition: five "folds" of it would be five copies of one run."""
    monkeypatch.chdir(REPO)
    trained = []
    monkeypatch.setattr(cv, "train_once", lambda *a, **k: trained.append(a))
    with pytest.raises(ValueError, match=r"--data.split=official .*--data.split=folds"):
        cv.main(["--config", "experiments/paper/attnmel_paper.yaml", "--dir", str(tmp_path / "cv")])
    with pytest.raises(ValueError, match="--data.split=official"):
        cv.main(["--config", "experiments/metablock.yaml", "--dir", str(tmp_path / "cv"), "--", "--data.split=official"])
    assert trained == []
    assert cv.data_option("experiments/paper/attnmel_paper.yaml", ["--data.split=folds"], "split", "folds") == "folds"
