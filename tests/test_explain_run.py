"""`make explain` on a tiny trained ProtoPNet run: the files, the table, W&B, compare's columns,
the one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from datamodules.entry_point import run as entry_point
from experiments import compare
from experiments.explain import main as explain
from experiments.runs import mean_std
from experiments.train import main as train
from lightning_modules.explain.report import HEADLINE
from tests.conftest import SMALL_SYNTHETIC

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synthetic_cache) -> Path:
    """One short epoch of the ProtoPNet experiment at 32 px, tested, with its (offline) W&B run."""
    root = tmp_path_factory.mktemp("runs")
    return train([
        "--config", str(REPO / "experiments" / "protopnet.yaml"),
        f"--run.root={root}",
        f"--data.data_dir={synthetic_cache}",
        f"--data.source_options={json.dumps(SMALL_SYNTHETIC)}",
        "--data.image_size=32", "--data.batch_size=16", "--data.num_workers=0",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1", "--model.init_args.last_layer_epochs=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ])  # fmt: skip


#: Every check on a few images with the two cheapest maps (Score-CAM, Integrated Gradients and the
#: randomisation of every map take minutes even at 32 px: the slow test below runs them all).
FAST = ["--limit", "4", "--steps", "4", "--road-images", "1", "--sanity-images", "1", "--attack-images", "2", "--quiet"]


@pytest.fixture(scope="module")
def explained(tiny_run) -> dict:
    return explain(["--run", str(tiny_run), "--methods", "attention", "gradcam", *FAST])


def test_explain_writes_its_files(tiny_run, explained):
    assert json.loads((tiny_run / "explanations.json").read_text()) == json.loads(json.dumps(explained))
    assert explained["images"] == explained["images_with_masks"] == 4 and explained["split"] == "test"
    for name in ("examples", "curves", "randomisation"):
        assert (tiny_run / "explanations" / f"{name}.png").stat().st_size > 0
    table = (tiny_run / "explanations.md").read_text()
    for row in ("top_prototype", "predicted_class", "gradcam", "uniform", "centre", "random"):
        assert f"| {row} |" in table
    assert "python -m experiments.explain --run" in table and "out of scope" in table


def test_every_map_is_scored_by_every_check(explained):
    maps = explained["maps"]
    assert list(maps) == ["top_prototype", "predicted_class", "gradcam", "uniform", "centre", "random"]
    assert [maps[n]["kind"] for n in ("top_prototype", "gradcam", "uniform")] == ["attention", "post-hoc", "baseline"]
    for name in ("top_prototype", "predicted_class", "gradcam", "random"):
        assert set(maps[name]) >= {"lesion_mass", "pointing_game", "rank_accuracy", "deletion_auc", "insertion_auc",
                                   "road", "road_morf", "road_lerf"}, name  # fmt: skip
        assert 0 <= maps[name]["lesion_mass"] <= 1 and 0 <= maps[name]["deletion_auc"] <= 1
    assert "deletion_auc" not in maps["uniform"] and "deletion_auc" not in maps["centre"]
    assert explained["road"]["images"] == 1
    check = explained["randomisation"]
    assert check["images"] == 1 and check["blocks"][0] == "last_layer"
    assert all(len(v["spearman"]) == len(check["blocks"]) for v in check["maps"].values())
    attack = explained["attack"]
    assert attack["images"] == 2 and 0 <= attack["success_rate"] <= 1


@pytest.mark.slow
def test_every_method(tiny_run, tmp_path):
    scores = explain(["--run", str(tiny_run), "--out", str(tmp_path), "--ig-steps", "4", "--no-wandb", *FAST])
    assert scores["methods"] == ["attention", "gradcam", "gradcam++", "scorecam", "eigencam", "integrated_gradients"]
    for name in ("gradcam++", "scorecam", "eigencam", "integrated_gradients"):
        assert scores["maps"][name]["kind"] == "post-hoc"
        assert set(scores["maps"][name]) >= {"lesion_mass", "pointing_game", "deletion_auc", "road"}, name
        assert len(scores["randomisation"]["maps"][name]["spearman"]) == len(scores["randomisation"]["blocks"])
    assert "| integrated_gradients | post-hoc |" in (tmp_path / "explanations.md").read_text()
    assert not (tmp_path / "wandb").exists()


def test_explain_logs_to_the_runs_wandb_run(tiny_run, explained):
    tables = [p for run in (tiny_run / "wandb").glob("offline-run-*")
              for p in (run / "files" / "media" / "table" / "explain").glob("table_*.table.json")]  # fmt: skip
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    assert logged["columns"][:3] == ["map", "kind", "lesion_mass"]
    assert {row[0] for row in logged["data"]} == set(explained["maps"])


def test_compare_shows_the_headline_scores(tiny_run, explained, tmp_path):
    maps = explained["maps"]
    assert explained["headline"] == {
        "pointing game: attention": maps["top_prototype"]["pointing_game"],  # ProtoPNet's first own map
        "pointing game: Grad-CAM": maps["gradcam"]["pointing_game"],
        "pointing game: centre prior": maps["centre"]["pointing_game"],
        "deletion AUC: attention": maps["top_prototype"]["deletion_auc"],
        "deletion AUC: random": maps["random"]["deletion_auc"],
        "ROAD: attention": maps["top_prototype"]["road"],
        "Spearman, randomised: attention": explained["randomisation"]["maps"]["top_prototype"]["spearman"][-1],
        "attack success rate": explained["attack"]["success_rate"],
    }
    assert [t for t, _, _ in HEADLINE] == list(explained["headline"])[:-1]
    columns = compare.explanation_columns([tiny_run, tiny_run])  # two seeds: the same run twice
    assert list(columns) == list(explained["headline"])
    assert columns["deletion AUC: random"] == mean_std([maps["random"]["deletion_auc"]] * 2)
    assert compare.explanation_columns([tiny_run, tmp_path]) == {}  # a seed without explanations.json
    row = {"auroc": mean_std([0.9]), "bacc": mean_std([0.8]), "parameters": 1e6, "train_minutes": mean_std([1.0]),
           "inference_ms_per_image": 1.0, "explanations": columns}  # fmt: skip
    head, _, cells = compare.table({"ProtoPNet": row}).splitlines()
    titles, values = head.strip("| ").split(" | "), cells.strip("| ").split(" | ")
    position = titles.index("deletion AUC: random")
    assert values[position] == f"{maps['random']['deletion_auc']:.3f} ± 0.000"


def test_explain_refuses_bad_options_in_one_line(tmp_path, capsys):
    for argv, message in [
        (["--run", str(tmp_path / "missing")], f"--run {tmp_path / 'missing'}: no such folder (a training run's folder, "
                                                 "e.g. runs/attn_vgg/<run>)"),
        (["--run", str(tmp_path)], f"--run {tmp_path}: no checkpoints/best-*.ckpt or checkpoints/last.ckpt in it"),
        (["--ckpt", str(tmp_path / "x.ckpt")], f"--ckpt {tmp_path / 'x.ckpt'}: no such file"),
        (["--run", str(tmp_path), "--limit", "0"], "--limit=0: must be an integer >= 1"),  # before any file is read
        (["--run", str(tmp_path), "--road-images", "-1"], "--road-images=-1: must be an integer >= 0"),
    ]:
        with pytest.raises(SystemExit) as stop:
            entry_point(explain, argv)
        assert stop.value.code == 1
        assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"], argv


def test_make_explain_passes_its_options():
    out = subprocess.run(["make", "-n", "-W", "pyproject.toml", "explain", "RUN=runs/x/y", "LIMIT=8",
                          "METHODS=attention gradcam", "ARGS=--quiet"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    line = next(l for l in out.splitlines() if "experiments.explain" in l)
    assert line.split("experiments.explain", 1)[1].split() == ["--run", "runs/x/y", "--limit", "8", "--methods",
                                                               "attention", "gradcam", "--quiet"]  # fmt: skip
