"""ProtoPNet end to end on a small synthetic set: stages, push callback, pictures, analysis, attack."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.train import main as train
from tests.conftest import SMALL_SYNTHETIC
from tests.test_experiments import REPO, quick_args


@pytest.fixture(scope="module")
def protopnet_run(tmp_path_factory, synthetic_cache) -> Path:
    """Three epochs (warm-up, joint, joint), pushes after epochs 2 and 3."""
    root = tmp_path_factory.mktemp("protopnet")
    return train(quick_args(
        REPO / "experiments" / "protopnet.yaml", root, synthetic_cache,
        "--trainer.max_epochs=3", "--model.init_args.push_start=2",
        "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=3",
        "--model.init_args.prototypes_per_class=3", "--data.image_size=48",
    ))  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(protopnet_run):
    return torch.load(next((protopnet_run / "checkpoints").glob("best-*.ckpt")), map_location="cpu",
                      weights_only=True)  # fmt: skip


def test_stages_are_logged_and_best_checkpoint_is_a_pushed_epoch(protopnet_run, checkpoint):
    import csv

    rows = list(csv.DictReader(open(protopnet_run / "metrics.csv")))
    stages = [float(r["train/stage_joint"]) for r in rows if r.get("train/stage_joint")]
    assert stages == [0.0, 1.0, 1.0]  # warm-up, then joint
    for term in ("train/crs_ent", "train/clst", "train/sep", "train/l1", "push/mean_distance"):
        assert any(r.get(term) for r in rows), term
    assert checkpoint["epoch"] in (1, 2)  # the two pushed epochs; epoch 0 scores push_auroc 0
    assert checkpoint["protopnet_last_push_epoch"] == checkpoint["epoch"]


def test_push_record_and_pictures(protopnet_run):
    folders = sorted((protopnet_run / "prototypes").iterdir())
    assert [f.name for f in folders] == ["epoch001", "epoch002"]
    record = json.loads((folders[-1] / "prototypes.json").read_text())["prototypes"]
    assert len(record) == 6 * 3
    for entry in record:
        assert entry["image_class"] == entry["class"]  # class-specific push
        for key in ("image_id", "cell", "distance", "receptive_field_box", "activation_box"):
            assert key in entry
        y0, y1, x0, x1 = entry["activation_box"]
        assert 0 <= y0 < y1 <= 48 and 0 <= x0 < x1 <= 48
        for kind in ("patch", "boxes", "heatmap"):
            assert (folders[-1] / f"prototype{entry['prototype']:04d}_{kind}.png").is_file()
    media = next((protopnet_run / "wandb").glob("offline-run-*")) / "files" / "media" / "images"
    assert len(list(media.glob("prototypes_*.png"))) == 2 * 18  # one panel per push


def test_pushed_prototypes_are_training_patches(protopnet_run, checkpoint):
    """After the last push (and last-layer optimisation only), each prototype sits at distance ~0
    from its recorded patch."""
    from datamodules.checkpoint_data import build_datamodule
    from lightning_modules.modules.loading import load_module

    module = load_module(next((protopnet_run / "checkpoints").glob("best-*.ckpt")))
    datamodule = build_datamodule(checkpoint, None, None, "train", num_workers=0)
    dataset = datamodule.eval_dataloader("train").dataset
    record = checkpoint["callbacks"]["PrototypePush"]["records"]
    with torch.no_grad():
        for entry in record[:6]:
            distances = module.net(dataset[entry["image_index"]]["image"][None]).distances[0, entry["prototype"]]
            h, w = entry["cell"]
            assert distances[h, w].item() == pytest.approx(0.0, abs=1e-3)  # float32 expansion |z|^2 - 2zp + |p|^2
            assert distances[h, w].item() == pytest.approx(distances.min().item(), abs=1e-4)


def test_local_and_global_analysis_and_attack(protopnet_run, tmp_path, synthetic_cache):
    from datamodules.lesion_datamodule import LesionDataModule
    from experiments import prototypes

    best = str(next((protopnet_run / "checkpoints").glob("best-*.ckpt")))
    image = str(LesionDataModule(data_dir=str(synthetic_cache), source_options=SMALL_SYNTHETIC).records("test")[0].image_path)
    rows = prototypes.explain(best, image, top_k=3, out=str(tmp_path / "explain.png"))
    assert len(rows) == 3 and (tmp_path / "explain.png").stat().st_size > 0
    assert rows[0]["similarity"] >= rows[1]["similarity"] >= rows[2]["similarity"]
    for r in rows:
        assert r["contribution"] == pytest.approx(r["similarity"] * r["class_weight"], rel=1e-5)

    table = prototypes.nearest(best, k=2, out=str(tmp_path / "nearest.json"))
    assert len(table) == 18 and all(len(v) == 2 and v[0]["distance"] <= v[1]["distance"] for v in table.values())

    # "This does not look like that": make prototype 0 fire in a corner it did not match.
    region = (0, 16, 0, 16)
    eps = 8 / 255
    result = prototypes.attack(best, image, prototype=0, region=region, mode="raise", epsilon=eps, steps=30,
                               out=str(tmp_path / "attack.png"))  # fmt: skip
    assert result.similarity_after > result.similarity_before + 0.05
    assert result.linf <= eps + 1e-6
    outside = torch.ones(48, 48, dtype=torch.bool)
    outside[:16, :16] = False
    assert float(result.perturbation[0][:, outside].abs().max()) == 0.0
    assert (tmp_path / "attack.png").stat().st_size > 0


def test_analysis_refuses_what_it_cannot_do_and_never_replaces_a_figure(protopnet_run, synthetic_cache, tmp_path,
                                                                       capsys):
    from datamodules.lesion_datamodule import LesionDataModule
    from experiments import prototypes

    best = str(next((protopnet_run / "checkpoints").glob("best-*.ckpt")))
    image = LesionDataModule(data_dir=str(synthetic_cache), source_options=SMALL_SYNTHETIC).records("test")[1].image_path
    with pytest.raises(ValueError, match=r"--prototype 999: this model has 18 prototypes, 0 to 17"):
        prototypes.attack(best, str(image), prototype=999, region=(0, 16, 0, 16), steps=1)
    with pytest.raises(ValueError, match=r"--region 40 60 0 16: must be a box .* <= 48 and 0 <= X0 < X1 <= 48"):
        prototypes.attack(best, str(image), prototype=0, region=(40, 60, 0, 16), steps=1)
    with pytest.raises(ValueError, match="nearest writes a JSON table"):
        prototypes.nearest(best, k=1, out=str(tmp_path / "nearest.png"))

    capsys.readouterr()
    for _ in range(2):
        prototypes.attack(best, str(image), prototype=1, region=(0, 16, 0, 16), steps=1)
    analysis = protopnet_run / "analysis"
    first, second = analysis / f"attack_{image.stem}_p1_paper.png", analysis / f"attack_{image.stem}_p1_paper_2.png"
    assert sorted(analysis.glob(f"attack_{image.stem}_p1_*.png")) == [first, second]
    assert capsys.readouterr().err.splitlines()[-2:] == [f"figure: {first}", f"figure: {second}"]
    with pytest.raises(FileExistsError, match=f"--out {first} exists"):
        prototypes.main(["attack", "--ckpt", best, "--image", str(image), "--prototype", "1",
                         "--region", "0", "16", "0", "16", "--out", str(first)])  # fmt: skip


def test_class_agnostic_protopnet_trains_and_pushes(tmp_path, synthetic_cache):
    """``class_specific=False`` (the reference code crashes there): any class's patch may be taken."""
    run_dir = train(quick_args(REPO / "experiments" / "protopnet.yaml", tmp_path, synthetic_cache,
                               "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                               "--trainer.limit_val_batches=1", "--run.wandb=false",
                               "--model.init_args.class_specific=false", "--model.init_args.prototypes_per_class=2"))
    record = json.loads(next((run_dir / "prototypes").glob("*/prototypes.json")).read_text())["prototypes"]
    assert len(record) == 12 and all("image_id" in e for e in record)
    assert np.isfinite(json.loads((run_dir / "metrics.json").read_text())["test"]["auroc"])


@pytest.mark.slow
def test_push_under_ddp_on_two_cpu_processes(tmp_path, synthetic_cache):
    """The push's running minima are reduced across processes: every prototype gets one source
    patch, the same on both ranks (the checkpoint written by rank 0 holds the global result)."""
    import subprocess
    import sys

    args = quick_args(REPO / "experiments" / "protopnet.yaml", tmp_path, synthetic_cache,
                      "--trainer.accelerator=cpu", "--trainer.strategy=ddp",  # made find-unused by the CLI
                      "--trainer.devices=2", "--trainer.max_epochs=2", "--model.init_args.push_start=2",
                      "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                      "--model.init_args.prototypes_per_class=2", "--run.wandb=false")  # fmt: skip
    subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, check=True, timeout=900)
    (run_dir,) = list((tmp_path / "protopnet").iterdir())
    record = json.loads((run_dir / "prototypes" / "epoch001" / "prototypes.json").read_text())["prototypes"]
    assert len(record) == 12 and all(e["image_class"] == e["class"] for e in record)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    from datamodules.checkpoint_data import build_datamodule
    from lightning_modules.modules.loading import load_module

    module = load_module(run_dir / "checkpoints" / "last.ckpt")
    dataset = build_datamodule(ckpt, None, None, "train", num_workers=0).eval_dataloader("train").dataset
    with torch.no_grad():  # the pushed prototypes are the recorded patches, whichever rank saw them
        for entry in record:
            distances = module.net(dataset[entry["image_index"]]["image"][None]).distances[0, entry["prototype"]]
            assert distances[tuple(entry["cell"])].item() == pytest.approx(0.0, abs=1e-4)  # float32 expansion |z|^2 - 2zp + |p|^2
