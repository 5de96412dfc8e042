"""make figures: the committed pictures come from runs, are small, are the same bytes when drawn
again from the same runs, and the gallery page links only what exists."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from experiments import figures, registry
from lightning_modules.protopnet.gallery import chosen_prototypes, push_folder
from tests.conftest import SMALL_SYNTHETIC
from tests.test_docs_links import REPO, broken_links

ALWAYS = {"synthetic_lesions.png", "metablock_confusion_matrix.png", "attention_attn_vgg.png",
          "attention_soft_attention.png", "protopnet_explanation.png", "protopnet_prototypes.png",
          "protopnet_attack.png", "abe_retrieval.png"}


def test_each_figure_run_is_a_compare_variant_of_its_experiment():
    variants = {v.name: v.config for v in registry.variants()}
    for experiment, variant in figures.FIGURE_RUNS.items():
        assert variants[variant] == f"experiments/{experiment}.yaml"


def test_compare_runs_are_the_seed_runs_and_an_unfinished_compare_is_refused(tmp_path):
    expected = {"metablock": "metablock-s1", "attn_vgg": "attnvgg-s1", "soft_attention": "soft-attention-concat-s1",
                "protopnet": "protopnet-s1", "abe": "abe-m-k-nn-s1"}
    for name in list(expected.values())[:-1]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="abe-m-k-nn-s1"):
        figures.compare_runs(tmp_path)
    (tmp_path / "abe-m-k-nn-s1").mkdir()
    (tmp_path / "abe-m-k-nn-s1" / "metrics.json").write_text("{}")
    assert figures.compare_runs(tmp_path) == {k: tmp_path / v for k, v in expected.items()}


def test_publish_caps_the_width_uses_a_palette_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    picture = (rng.random((300, 1800, 3)) * 255).astype(np.uint8)
    a, b = figures.publish(picture, tmp_path / "a.png"), figures.publish(picture, tmp_path / "b.png")
    image = Image.open(a)
    assert image.size == (figures.MAX_WIDTH, 150) and image.mode == "P"
    assert a.read_bytes() == b.read_bytes()


def test_stack_pads_narrower_pictures_with_white():
    out = figures.stack([np.zeros((2, 3, 3), np.uint8), np.zeros((1, 5, 3), np.uint8)])
    assert out.shape == (3, 5, 3)
    assert (out[:2, 3:] == 255).all() and (out[:2, :3] == 0).all() and (out[2] == 0).all()


def test_prototype_gallery_picks_the_closest_prototypes_per_class_and_the_checkpoints_push(tmp_path):
    record = [{"prototype": 0, "class": "A", "distance": 0.5, "image_id": "x"},
              {"prototype": 1, "class": "A", "distance": 0.2, "image_id": "y"},
              {"prototype": 2, "class": "A", "distance": 0.2, "image_id": "z"},
              {"prototype": 3, "class": "B", "distance": 0.1},  # no source patch: no pictures
              {"prototype": 4, "class": "B", "distance": 0.9, "image_id": "w"}]
    chosen = chosen_prototypes(record, per_class=2)
    assert {k: [e["prototype"] for e in v] for k, v in chosen.items()} == {"A": [1, 2], "B": [4]}
    for epoch, prototypes in ((5, record[:2]), (11, record)):
        folder = tmp_path / "prototypes" / f"epoch{epoch:03d}"
        folder.mkdir(parents=True)
        (folder / "prototypes.json").write_text(json.dumps({"epoch": epoch, "prototypes": prototypes}))
    assert push_folder(tmp_path, record[:2]).name == "epoch005"
    assert push_folder(tmp_path, None).name == "epoch011"
    with pytest.raises(FileNotFoundError, match="no prototypes"):
        push_folder(tmp_path / "elsewhere")


def test_subgroup_chart_draws_the_scored_groups(tmp_path):
    path = tmp_path / "subgroups.csv"
    path.write_text("field,value,images,patients,auroc,auroc_ci_low,auroc_ci_high,bacc,bacc_ci_low,bacc_ci_high,note\n"
                    "sex,female,40,30,0.9,0.8,0.95,0.7,0.6,0.8,\n"
                    "sex,male,38,29,0.85,0.7,0.9,,,,\n"
                    "sex,<missing>,3,3,,,,,,,not scored: 3 images < minimum 20\n")
    fig = figures.subgroup_chart(path)
    labels = {t.get_position()[1]: t.get_text() for t in fig.axes[0].get_yticklabels()}
    assert labels == {1: "sex = female  (n=40)", 0: "sex = male  (n=38)"}  # in file order, top down
    assert len(fig.axes[0].containers) == 2 and len(fig.axes[1].containers) == 1  # bacc of male not scored
    (female,) = [c for c in fig.axes[0].containers if c.lines[0].get_ydata()[0] == 1]
    assert female.lines[0].get_xdata()[0] == 0.9
    figures.plt.close(fig)


def test_optional_figures_that_lost_their_source_are_removed(tmp_path):
    for name in ("compare_auroc.png", "subgroups.png", "notes.png"):
        (tmp_path / name).write_bytes(b"x")
    figures.remove_stale(tmp_path, [figures.Figure("subgroups.png", "", "", ())])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.png", "subgroups.png"]


@pytest.mark.slow
def test_make_figures_on_tiny_runs(tmp_path, synthetic_cache, monkeypatch):
    """Trains the five tiny runs, draws every figure, and draws them again from the same runs
    (reused, not retrained) with a reliability diagram and scored subgroup results put in the MetaBlock run."""
    overrides = [f"--data.data_dir={synthetic_cache}", f"--data.source_options={json.dumps(SMALL_SYNTHETIC)}",
                 "--data.image_size=32", "--data.batch_size=16", "--data.num_workers=0", "--trainer.max_epochs=1",
                 "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
                 "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]  # fmt: skip
    monkeypatch.chdir(REPO)  # the experiment configs are named relative to the repository, as make runs them
    out, gallery = tmp_path / "docs" / "figures", tmp_path / "docs" / "gallery.md"
    argv = ["--work", str(tmp_path / "runs"), "--out", str(out), "--gallery", str(gallery), "--", *overrides]
    first = {f.name for f in figures.main(argv)}
    # Every run's test writes its reliability diagram; its 50 test images score no subgroup (no chart).
    metablock = tmp_path / "runs" / "metablock"
    assert (metablock / "subgroups.csv").is_file()
    assert first == ALWAYS | {"reliability.png"} and {p.name for p in out.iterdir()} == first
    drawn = {name: (out / name).read_bytes() for name in ALWAYS}
    for name in first:
        image = Image.open(out / name)
        assert image.mode == "P" and image.width <= figures.MAX_WIDTH
        assert (out / name).stat().st_size < figures.MAX_BYTES, name
    assert not broken_links(gallery)

    Image.new("RGB", (40, 30), "white").save(metablock / "test_reliability.png")
    (metablock / "subgroups.csv").write_text("field,value,images,auroc,auroc_ci_low,auroc_ci_high,bacc\n"
                                             "sex,female,40,0.9,0.8,0.95,0.7\n")
    second = {f.name for f in figures.main(argv)}
    assert second == ALWAYS | {"reliability.png", "subgroups.png"}
    assert {name: (out / name).read_bytes() for name in ALWAYS} == drawn  # the same runs, the same bytes
    assert "subgroups.png" in gallery.read_text() and not broken_links(gallery)


def test_gallery_page_names_the_command_the_runs_and_the_notebook_and_its_links_resolve(tmp_path):
    out, page = tmp_path / "docs" / "figures", tmp_path / "docs" / "gallery.md"
    out.mkdir(parents=True)
    (out / "a.png").write_bytes(b"png")
    shown = [figures.Figure("a.png", "A title", "What it shows.", ("runs/figures/metablock",), "synthetic_lesions.ipynb"),
             figures.Figure("a.png", "Without a notebook", "Caption.", ("runs/x", "runs/y"))]
    text = figures.gallery_markdown(shown, out, page, "make figures", "abc1234")
    page.write_text(text)
    assert "drawn by `make figures` at commit `abc1234`" in text
    assert "![A title](figures/a.png)" in text
    assert "From `runs/figures/metablock`. `notebooks/synthetic_lesions.ipynb` draws it too." in text
    assert "From `runs/x`, `runs/y`.\n" in text
    assert not broken_links(page)
    (out / "a.png").unlink()
    broken = broken_links(page)  # the check sees a picture that is gone
    assert len(broken) == 2 and all(b.endswith("figures/a.png (no such file)") for b in broken)


def test_a_run_whose_subgroups_are_all_unscored_gets_no_chart_and_no_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "subgroups.csv").write_text("field,value,images,auroc,bacc,note\nsex,female,7,,,not scored: 7 images\n")
    gallery = figures.Gallery(tmp_path / "out")
    figures.draw_optional(gallery, run, None)
    assert gallery.figures == [] and not (tmp_path / "out" / "subgroups.png").exists()
