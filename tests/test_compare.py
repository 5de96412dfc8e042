"""One-command comparison: the same data, split and seeds for every model, one table and figure."""

from __future__ import annotations

import json

import pytest

from experiments import compare, registry
from experiments.net_options import ConfigError
from tests.conftest import SMALL_SYNTHETIC
from tests.test_experiments import REPO


def test_every_model_has_a_config_and_the_make_target_passes_data():
    import subprocess

    for config, _ in compare.MODELS.values():
        assert (REPO / config).is_file()
    line = subprocess.run(["make", "-n", "-W", "pyproject.toml", "compare", "DATA=pad_ufes20", "SEEDS=4 5"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "-m experiments.compare --seeds 4 5 -- --data.dataset=pad_ufes20" in " ".join(line.split())


def test_the_registry_names_every_experiment_and_the_table_rows_in_order(tmp_path):
    """One list (experiments/registry.yaml) gives compare's rows (the README table's, in its order)
    and bench_gpu's experiments; every experiment config is in it."""
    from experiments import bench_gpu

    configs = {p.stem for p in (REPO / "experiments").glob("*.yaml")} - {"base", "registry"}
    assert set(registry.experiments()) == configs
    assert list(compare.MODELS) == ["image only", "concat", "MetaBlock", "AttnVGG", "soft attention (dot)",
                                    "soft attention (general)", "soft attention (concat)", "ProtoPNet", "ABE-M (k-NN)"]
    assert compare.MODELS["image only"] == ("experiments/metablock.yaml", ["--model.init_args.fusion=none"])
    assert bench_gpu.CONFIGS == ("metablock", "attn_vgg", "soft_attention", "protopnet", "abe")
    (variant,) = [v for v in registry.variants() if v.name == "soft attention (dot)"]
    net = registry.network_config(variant)
    assert net["class_path"] == "lightning_modules.nets.soft_attention.SoftAttentionClassifier"
    assert net["init_args"]["scoring"] == "dot" and net["init_args"]["feature_stage"] == -2  # override on the YAML's

    bad = tmp_path / "registry.yaml"
    bad.write_text("metablock:\n  MetaBlock: []\nresnet:\n  ResNet: []\n")
    with pytest.raises(ConfigError, match="registry.yaml: experiment 'resnet' has no config experiments/resnet.yaml"):
        registry.variants(bad)
    bad.write_text("metablock:\n  MetaBlock: --model.init_args.fusion=none\n")
    with pytest.raises(ConfigError, match="MetaBlock: overrides must be a list of --key=value"):
        registry.variants(bad)
    bad.write_text("metablock:\n  MetaBlock: []\nabe:\n  MetaBlock: []\n")
    with pytest.raises(ConfigError, match="the variant name 'MetaBlock' is used twice"):
        registry.variants(bad)


@pytest.mark.slow  # three short training runs in subprocesses
def test_compare_tabulates_models_over_seeds(tmp_path, synthetic_cache, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "cmp"
    compare.main(["--seeds", "1", "2", "--models", "MetaBlock", "soft attention (dot)", "--dir", str(out), "--",
                  f"--data.data_dir={synthetic_cache}", f"--data.source_options={json.dumps(SMALL_SYNTHETIC)}",
                  "--data.image_size=32", "--data.batch_size=16", "--data.num_workers=0", "--trainer.max_epochs=1",
                  "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--run.wandb=false"])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())["models"]
    assert list(summary) == ["MetaBlock", "soft attention (dot)"]
    runs = [json.loads((out / f"metablock-s{s}" / "metrics.json").read_text())["test"]["auroc"] for s in (1, 2)]
    assert summary["MetaBlock"]["auroc"]["runs"] == runs
    assert "lesion_mass" in summary["soft attention (dot)"] and "lesion_mass" not in summary["MetaBlock"]
    assert summary["MetaBlock"]["inference_ms_per_image"] > 0 and summary["MetaBlock"]["parameters"] > 0
    text = (out / "summary.md").read_text()
    assert text.startswith("| model |") and text.count("\n| ") == 2 and "± " in text  # header + two models
    assert (out / "auroc.png").stat().st_size > 0
    # Intervals per model and the paired difference from the best, from the runs' predictions.csv.
    best = json.loads((out / "summary.json").read_text())["evaluation"]["best"]
    other = next(name for name in summary if name != best)
    low, high = summary[other]["auroc_ci"]
    assert low <= summary[other]["seed_averaged"]["auroc"] <= high
    assert summary[other]["vs_best"]["auroc"]["p_holm"] == summary[other]["vs_best"]["auroc"]["p"]  # one test
    assert "| best |" in text and "Holm" in text

    # make evaluate on two runs' predictions: the paired result, as the library computes it.
    from experiments import evaluate
    from lightning_modules.evaluation import compare as compare_files
    from lightning_modules.evaluation import read_predictions

    a, b = (out / f"metablock-s{s}" / "predictions.csv" for s in (1, 2))
    result = json.loads((evaluate.main([str(a), str(b), "--n-boot", "300"]) / "evaluation.json").read_text())
    assert result["comparison"] == json.loads(json.dumps(compare_files(read_predictions(a), read_predictions(b),
                                                                       n_boot=300)))
    assert result["comparison"]["images"]["only_in_a"] == 0 and set(result["comparison"]["delong_per_class"]) == {
        "ACK", "BCC", "MEL", "NEV", "SCC", "SEK"}
