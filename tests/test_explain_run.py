"""`make explain` on a tiny trained ProtoPNet run: the files, the table, W&B, compare's columns."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from experiments.explain import explanation_columns, main as explain
from experiments.train import main as train
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


@pytest.fixture(scope="module")
def explained(tiny_run) -> dict:
    return explain(["--run", str(tiny_run), "--limit", "4", "--steps", "4", "--ig-steps", "4", "--road-images", "2",
                    "--sanity-images", "2", "--attack-images", "2", "--quiet"])  # fmt: skip


def test_explain_writes_its_files(tiny_run, explained):
    assert json.loads((tiny_run / "explanations.json").read_text()) == json.loads(json.dumps(explained))
    assert explained["images"] == explained["images_with_masks"] == 4 and explained["split"] == "test"
    for name in ("examples", "curves", "randomisation"):
        assert (tiny_run / "explanations" / f"{name}.png").stat().st_size > 0
    table = (tiny_run / "explanations.md").read_text()
    for row in ("top_prototype", "predicted_class", "gradcam", "scorecam", "integrated_gradients", "centre", "random"):
        assert f"| {row} |" in table
    assert "python -m experiments.explain --run" in table and "out of scope" in table


def test_every_map_is_scored_by_every_check(explained):
    maps = explained["maps"]
    assert [maps[n]["kind"] for n in ("top_prototype", "gradcam", "uniform")] == ["attention", "post-hoc", "baseline"]
    for name in ("top_prototype", "predicted_class", "gradcam", "gradcam++", "scorecam", "eigencam",
                 "integrated_gradients", "random"):  # fmt: skip
        assert set(maps[name]) >= {"lesion_mass", "pointing_game", "rank_accuracy", "deletion_auc", "insertion_auc",
                                   "road", "road_morf", "road_lerf"}, name  # fmt: skip
        assert 0 <= maps[name]["lesion_mass"] <= 1 and 0 <= maps[name]["deletion_auc"] <= 1
    assert "deletion_auc" not in maps["uniform"] and "deletion_auc" not in maps["centre"]
    assert explained["road"]["images"] == 2
    check = explained["randomisation"]
    assert check["images"] == 2 and check["blocks"][0] == "last_layer"
    assert all(len(v["spearman"]) == len(check["blocks"]) for v in check["maps"].values())
    attack = explained["attack"]
    assert attack["images"] == 2 and 0 <= attack["success_rate"] <= 1


def test_explain_logs_to_the_runs_wandb_run(tiny_run, explained):
    tables = [p for run in (tiny_run / "wandb").glob("offline-run-*")
              for p in (run / "files" / "media" / "table" / "explain").glob("table_*.table.json")]  # fmt: skip
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    assert logged["columns"][:3] == ["map", "kind", "lesion_mass"]
    assert {row[0] for row in logged["data"]} == set(explained["maps"])


def test_explanation_columns_for_compare(tiny_run, explained, tmp_path):
    columns = explanation_columns([tiny_run, tmp_path])  # the second run was never explained
    attention = columns["pointing game: attention"]
    assert attention["runs"] == [explained["maps"]["top_prototype"]["pointing_game"], None]
    assert attention["mean"] == attention["runs"][0] and attention["std"] == 0.0
    assert columns["deletion AUC: random"]["runs"][0] == explained["maps"]["random"]["deletion_auc"]


def test_explain_refuses_bad_options(tiny_run, capsys):
    with pytest.raises(SystemExit):
        explain(["--run", str(tiny_run), "--limit", "0"])
    assert "--limit must be at least 1" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        explain(["--run", str(tiny_run / "explanations")])


def test_make_explain_passes_its_options():
    out = subprocess.run(["make", "-n", "-W", "pyproject.toml", "explain", "RUN=runs/x/y", "LIMIT=8",
                          "METHODS=attention gradcam", "ARGS=--quiet"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    line = next(l for l in out.splitlines() if "experiments.explain" in l)
    assert line.split("experiments.explain", 1)[1].split() == ["--run", "runs/x/y", "--limit", "8", "--methods",
                                                               "attention", "gradcam", "--quiet"]  # fmt: skip
