"""One short training epoch on each new reader's format-exact fixture, through the real entry point
and the dataset's ``experiments/data/<name>.yaml``; on data with lesion masks, attention is scored
against them (``val/lesion_mass``), as on the synthetic data. ISIC 2017's attention run (official
split, masks, a drafted JPEG) runs with every ``make test``; the others are slow tests."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

import dataset_writers as w
from experiments.train import main as train
from tests.test_experiments import REPO, quick_args

#: dataset -> (fixture writer, reader options, extra arguments)
RUNS = {
    "isic2017": (w.write_isic2017, {}, ["--data.split=official"]),
    "ph2": (w.write_ph2, {}, ["--data.n_folds=3"]),
    "derm7pt": (w.write_derm7pt, {}, ["--data.split=official"]),
    "ddi": (w.write_ddi, {}, ["--data.n_folds=3"]),
    "fitzpatrick17k": (w.write_fitzpatrick17k, {"allow_missing_images": True}, ["--data.n_folds=3"]),
    # 42 images: 21 lesions, three of each class (the split is by lesion)
    "ham10000": (lambda root: w.write_ham10000_masks(w.write_ham10000(root, n=42)), {}, ["--data.n_folds=3"]),
}


def run_args(experiment: str, dataset: str, root, tmp_path, *extra: str) -> list[str]:
    writer, options, more = RUNS[dataset]
    writer(root)
    return quick_args(REPO / "experiments" / f"{experiment}.yaml", tmp_path / "runs", root,
                      "--config", str(REPO / "experiments" / "data" / f"{dataset}.yaml"), f"--data.dataset={dataset}",
                      f"--data.source_options={json.dumps(options)}", "--data.image_size=32", "--data.batch_size=4",
                      "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--run.wandb=false", *more, *extra)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(RUNS))
def test_one_epoch_on_each_fixture(dataset, tmp_path):
    run_dir = train(run_args("metablock", dataset, tmp_path / dataset, tmp_path))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auroc"] <= 1.0
    with open(run_dir / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and len(rows) == metrics["test"]["n_images"]


@pytest.mark.parametrize("dataset", [
    "isic2017", *(pytest.param(d, marks=pytest.mark.slow) for d in ("ph2", "ham10000"))
])
def test_attention_is_scored_against_the_real_masks(dataset, tmp_path):
    """The masks of ISIC 2017 (0/255 PNGs, one drafted JPEG whose mask is resized), PH2 (1-bit
    BMPs) and HAM10000 reach the batches: the attention maps get a lesion mass every validation
    and at test, Grad-CAM's too."""
    run_dir = train(run_args("attn_vgg", dataset, tmp_path / dataset, tmp_path))
    with open(run_dir / "metrics.csv") as handle:
        masses = [float(r["val/lesion_mass"]) for r in csv.DictReader(handle) if r.get("val/lesion_mass")]
    assert len(masses) == 1 and 0.0 < masses[0] < 1.0
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    for key in ("lesion_mass", "lesion_mass_attn1", "lesion_mass_attn2", "gradcam_lesion_mass"):
        assert 0.0 <= test[key] <= 1.0, key
    # The logged attention panels carry the lesion's outline: white pixels inside the first 32 px tile
    # (the jet colour map blended with a picture is never pure white).
    panel = np.asarray(Image.open(sorted((run_dir / "attention").glob("*.png"))[0]).convert("RGB"))
    assert (panel[:32, :32] == 255).all(axis=-1).any()
