"""Integration: each experiment config trains briefly on CPU and leaves its artefacts."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from experiments import registry
from experiments.train import main as train
from tests.conftest import SMALL_SYNTHETIC

REPO = Path(__file__).resolve().parents[1]
# Every experiment config, as the registry lists them (experiments/registry.yaml).
EXPERIMENTS = sorted(REPO / "experiments" / f"{name}.yaml" for name in registry.experiments())


def quick_args(config: Path, run_root: Path, synthetic_cache: Path, *extra: str) -> list[str]:
    return [
        "--config", str(config),
        f"--run.root={run_root}",
        f"--data.data_dir={synthetic_cache}",
        f"--data.source_options={json.dumps(SMALL_SYNTHETIC)}",
        "--data.image_size=32",
        "--data.batch_size=16",
        "--data.num_workers=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("config", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_fast_dev_run_every_experiment(config, tmp_path, synthetic_cache):
    """Every experiment (ABE-M's k-NN probabilities too) gets the evaluation report, even on one
    test batch that lacks classes; its predictions file reads back."""
    from lightning_modules.evaluation import REPORT_KEYS, read_predictions

    run_dir = train(quick_args(config, tmp_path, synthetic_cache, "--trainer.fast_dev_run=true", "--eval.n_boot=50"))
    metrics = json.loads((run_dir / "metrics.json").read_text(), parse_constant=reject_constant)
    assert 0.0 <= metrics["test"]["auroc"] <= 1.0
    assert set(REPORT_KEYS) <= set(metrics["test"])
    assert len(read_predictions(run_dir / "predictions.csv")) == metrics["test"]["n_images"]
    assert len(read_predictions(run_dir / "val_predictions.csv")) == 16  # fast_dev_run: one validation batch


def reject_constant(name: str):
    raise ValueError(f"metrics.json holds {name}: not valid JSON")


def test_a_partial_test_split_scores_only_the_classes_it_has(tmp_path, synthetic_cache):
    """One test batch rarely holds every class: those without a positive get AUROC null (not 0.0)
    and the macro AUROC averages the rest."""
    run_dir = train(quick_args(REPO / "experiments" / "metablock.yaml", tmp_path, synthetic_cache,
                               "--trainer.fast_dev_run=true", "--data.batch_size=8"))  # fmt: skip
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    with open(run_dir / "predictions.csv") as handle:
        present = {r["label"] for r in csv.DictReader(handle)}
    assert 0 < len(present) < 6 and test["auroc_classes_scored"] == len(present)
    scored = {name: v for name, v in test["auroc_per_class"].items() if v is not None}
    assert set(scored) == present
    assert test["auroc"] == pytest.approx(sum(scored.values()) / len(scored), abs=1e-6)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, synthetic_cache):
    """Two epochs of the MetaBlock experiment (a few batches each), then a test of the best epoch."""
    root = tmp_path_factory.mktemp("runs")
    run_dir = train(quick_args(
        REPO / "experiments" / "metablock.yaml", root, synthetic_cache,
        "--trainer.max_epochs=2", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=3",
        "--calibrate=temperature", "--eval.positive=[MEL, BCC, SCC]", "--eval.age_bands=[40, 60]",
        "--eval.n_boot=500",
    ))  # fmt: skip
    return run_dir


def test_run_folder_layout(short_run):
    for name in ("config.yaml", "metrics.csv", "metrics.json", "predictions.csv", "val_predictions.csv",
                 "subgroups.csv", "subgroups.md", "test_confusion_matrix.png", "test_roc.png",
                 "test_reliability.png", "checkpoints/last.ckpt"):
        assert (short_run / name).is_file(), name
    assert len(list((short_run / "checkpoints").glob("best-epoch*.ckpt"))) == 1
    assert short_run.parent.name == "metablock"
    config = (short_run / "config.yaml").read_text()
    assert "fusion: metablock" in config and "max_epochs: 2" in config
    saved = yaml.safe_load(config)
    assert saved["checkpoint"]["dirpath"] is None  # a re-run of config.yaml writes its own folder
    assert saved["checkpoint"]["monitor"] == "val/auroc" and saved["early_stopping"]["init_args"]["patience"] == 15


def test_metrics_json_and_predictions_agree(short_run):
    metrics = json.loads((short_run / "metrics.json").read_text())
    test = metrics["test"]
    names = metrics["class_names"]
    assert names == ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
    for key in ("auroc", "bacc", "acc", "loss"):
        assert np.isfinite(test[key])
    assert set(test["auroc_per_class"]) == set(names)
    matrix = np.array(test["confusion_matrix"])
    assert matrix.shape == (6, 6) and matrix.sum() == test["n_images"]
    assert metrics["checkpoint"]["monitor"] == "val/auroc"
    assert metrics["checkpoint"]["tested"].endswith(".ckpt") and "best-epoch" in metrics["checkpoint"]["tested"]

    with open(short_run / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == test["n_images"]
    assert len({r["image_id"] for r in rows}) == len(rows)
    probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    labels = np.array([names.index(r["label"]) for r in rows])
    predicted = np.array([names.index(r["prediction"]) for r in rows])
    assert np.array_equal(predicted, probs.argmax(1))
    # accuracy recomputed from the file equals the logged one; the confusion matrix too
    assert (predicted == labels).mean() == pytest.approx(test["acc"], abs=1e-6)
    recomputed = np.zeros((6, 6), int)
    np.add.at(recomputed, (labels, predicted), 1)
    assert np.array_equal(recomputed, matrix)


def test_metrics_json_holds_the_evaluation_report(short_run, tmp_path):
    """The report's fixed keys, strict JSON; the predictions files carry group and subgroup metadata
    and read back; ``make evaluate`` on the run's file (its validation file and options found beside
    it) gives the same report; subgroups.csv has a row per value of each field."""
    from experiments import evaluate
    from lightning_modules.evaluation import REPORT_KEYS, read_predictions

    metrics = json.loads((short_run / "metrics.json").read_text(), parse_constant=reject_constant)
    test = metrics["test"]
    assert set(REPORT_KEYS) <= set(test)
    assert metrics["evaluation"] == {"subgroups": ["fitspatrick", "gender", "age", "region"], "age_bands": [40.0, 60.0],
                                     "positive": ["MEL", "BCC", "SCC"], "n_boot": 500, "seed": 0,
                                     "calibrate": "temperature", "val_images": 48}  # three batches of 16
    for key in ("auroc", "bacc", "acc"):
        low, high = test[f"{key}_ci"]
        assert low <= test[key] <= high
    assert "500 resamples" in test["ci_method"]["bootstrap"] and "groups (patients" in test["ci_method"]["bootstrap"]
    chosen = [r for r in test["operating_points"] if r["chosen_on"] == "val" and r["positive"] == "MEL+BCC+SCC"]
    assert [r["target_sensitivity"] for r in chosen] == [0.8, 0.9, 0.95]
    assert test["subgroups"]["file"] == "subgroups.csv" and "rows" not in test["subgroups"]

    predictions = read_predictions(short_run / "predictions.csv")
    assert list(predictions.metadata) == ["fitspatrick", "gender", "age", "region"]
    assert all(g.startswith("patient:") for g in predictions.groups)
    assert test["n_groups"] == len(set(predictions.groups))
    val = read_predictions(short_run / "val_predictions.csv")
    assert len(val) == 48 and not set(val.image_ids) & set(predictions.image_ids)
    with open(short_run / "subgroups.csv") as handle:
        rows = list(csv.DictReader(handle))
    expected = []
    for field in predictions.metadata:
        values = predictions.metadata[field]
        if field == "age":
            values = [None if v is None else "<40" if float(v) < 40 else "40-59" if float(v) < 60 else ">=60"
                      for v in values]
        present = {v for v in values if v is not None}
        numeric = lambda v: (0, float(v), v) if v.replace(".", "", 1).isdigit() else (1, 0.0, v)  # noqa: E731
        order = ["<40", "40-59", ">=60"] if field == "age" else sorted(present, key=numeric)
        expected += [(field, v) for v in order if v in present] + ([(field, "<missing>")] if None in values else [])
    assert [(r["field"], r["value"]) for r in rows] == expected
    assert sum(int(r["images"]) for r in rows if r["field"] == "gender") == test["n_images"]

    out = evaluate.main([str(short_run / "predictions.csv"), "--out", str(tmp_path / "again")])
    again = json.loads((out / "evaluation.json").read_text())["a"]["report"]
    for key in REPORT_KEYS:
        if key in ("auroc", "bacc", "acc", "auroc_per_class", "subgroups"):
            continue  # metrics.json keeps today's (torchmetrics) scores under these names; subgroups: the file
        reported = test[key]["temperature_scaling"] if key == "calibration" else test[key]
        recomputed = again[key]["temperature_scaling"] if key == "calibration" else again[key]
        assert recomputed == pytest.approx(reported, abs=2e-6) if isinstance(reported, float) else True, key
    assert again["auroc_ci"] == pytest.approx(test["auroc_ci"], abs=2e-6)  # 6-decimal probabilities in the file
    assert again["auroc"] == pytest.approx(test["auroc"], abs=1e-5)


def test_calibration_is_stored_in_the_tested_checkpoint(short_run):
    """--calibrate=temperature: the temperature the report fitted on the validation split is stored
    in the tested checkpoint (weights-only), not in last.ckpt, and a module loaded from it predicts
    with it (test_predict_a_folder_of_new_images checks predict's softmax(logits / T))."""
    from lightning_modules.modules.loading import load_module, read_checkpoint

    metrics = json.loads((short_run / "metrics.json").read_text())
    scaling = metrics["test"]["calibration"]["temperature_scaling"]
    stored = metrics["test"]["calibration"]["stored"]
    best = Path(metrics["checkpoint"]["tested"])
    assert stored["checkpoint"] == str(best) and stored["temperature"] == scaling["temperature"]
    assert stored["val_images"] == 48 and stored["fitted_on"] == "val"
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["calibration"]["temperature"] == scaling["temperature"] and checkpoint["state_dict"]
    assert "calibration" not in read_checkpoint(short_run / "checkpoints" / "last.ckpt")
    assert scaling["ece_after"] != scaling["ece_before"]
    assert load_module(best).temperature == scaling["temperature"]
    assert load_module(short_run / "checkpoints" / "last.ckpt").temperature == 1.0


def test_metrics_csv_has_each_epoch(short_run):
    with open(short_run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    epochs = {int(r["epoch"]) for r in rows if r.get("val/auroc")}
    assert epochs == {0, 1}


def test_wandb_offline_run_has_figures(short_run):
    runs = list((short_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = runs[0] / "files" / "media" / "images"
    assert list((media / "val").glob("confusion_matrix*.png"))
    assert list((media / "test").glob("roc*.png"))
    assert (runs[0] / f"run-{runs[0].name.split('-')[-1]}.wandb").stat().st_size > 0


def test_wandb_offline_run_has_interactive_panels(short_run):
    """wandb.plot charts and the predictions table, as the offline run wrote them to disk."""
    tables = next((short_run / "wandb").glob("offline-run-*")) / "files" / "media" / "table"
    read = lambda pattern: [json.loads(p.read_text()) for p in sorted(tables.glob(pattern))]  # noqa: E731
    val_matrices = read("val/confusion_matrix_plot_table_*.table.json")
    assert len(val_matrices) == 2  # one per validation epoch
    for table in val_matrices + read("test/confusion_matrix_plot_table_*.table.json"):
        assert table["columns"] == ["Actual", "Predicted", "nPredictions"] and len(table["data"]) == 36  # 6 x 6
    test = json.loads((short_run / "metrics.json").read_text())["test"]
    (test_matrix,) = read("test/confusion_matrix_plot_table_*.table.json")
    assert sum(row[2] for row in test_matrix["data"]) == test["n_images"]
    assert read("test/roc_curve_table_*.table.json") and read("test/pr_curve_table_*.table.json")
    (predictions,) = read("test/predictions_*.table.json")
    assert predictions["columns"][:7] == ["image_id", "image", "label", "prediction", "correct", "group", "prob_ACK"]
    assert len(predictions["data"]) == test["n_images"]  # MetaBlock has no attention column
    with open(short_run / "predictions.csv") as handle:
        first = next(csv.DictReader(handle))
    assert predictions["data"][0][0] == first["image_id"] and predictions["data"][0][5].startswith("patient:")
    (subgroups,) = read("test/subgroups_*.table.json")  # the evaluation report's tables and diagram
    with open(short_run / "subgroups.csv") as handle:
        assert subgroups["columns"] == next(csv.reader(handle)) and len(subgroups["data"]) == sum(1 for _ in handle)
    (points,) = read("test/operating_points_*.table.json")
    assert len(points["data"]) == len(test["operating_points"])
    assert list((tables.parent / "images" / "test").glob("reliability*.png"))


def test_checkpoint_is_weights_only_and_carries_the_encoder(short_run):
    ckpt = torch.load(short_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = ckpt["LesionDataModule"]
    assert state["class_names"] == ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
    assert "age" in state["encoder"]["mean"]
    assert ckpt["hyper_parameters"]["meta_dim"] == len(state["feature_names"])


def test_checkpoint_rebuilds_through_lightning(short_run):
    """LightningCLI stored the module's class and config, the network's among it: Lightning's
    ``load_from_checkpoint`` (weights only) rebuilds the same module without our help."""
    from lightning_modules.modules.classifier import LesionClassifier
    from lightning_modules.nets.fusion_classifier import FusionClassifier

    best = next((short_run / "checkpoints").glob("best-epoch*.ckpt"))
    hparams = torch.load(best, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["_class_path"] == "lightning_modules.modules.classifier.LesionClassifier"
    assert hparams["net"]["class_path"] == "lightning_modules.nets.fusion_classifier.FusionClassifier"
    assert hparams["net"]["init_args"]["fusion"] == "metablock"
    module = LesionClassifier.load_from_checkpoint(best, map_location="cpu", weights_only=True)
    assert isinstance(module.net, FusionClassifier) and module.class_names == ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]


def test_load_module_refuses_what_is_not_a_training_checkpoint(tmp_path):
    from lightning_modules.modules.loading import load_module

    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.1}}, path)
    with pytest.raises(ValueError, match="other.ckpt: not a checkpoint of a dermattn training run"):
        load_module(path)
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "lightning_modules.fusion_module.FusionModule",
                                                       "backbone": "resnet10t"}}, path)  # fmt: skip
    with pytest.raises(ValueError, match="written before networks were configured under model.init_args.net"):
        load_module(path)
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "collections.OrderedDict", "net": {}}}, path)
    with pytest.raises(ValueError, match="'collections.OrderedDict' is not a dermattn module"):
        load_module(path)


def test_predict_reproduces_test_predictions(short_run, tmp_path):
    from experiments.predict import predict

    best = next((short_run / "checkpoints").glob("best-epoch*.ckpt"))
    out = predict(str(best), split="test", out=str(tmp_path / "p.csv"), num_workers=0, accelerator="cpu",
                  calibrated=False)  # the run's predictions.csv holds the uncalibrated probabilities
    read = lambda p: {r["image_id"]: r for r in csv.DictReader(open(p))}  # noqa: E731
    fresh, logged = read(out), read(short_run / "predictions.csv")
    assert fresh.keys() == logged.keys()
    for image_id, row in logged.items():
        for key, value in row.items():
            if key.startswith("prob_"):
                assert float(fresh[image_id][key]) == pytest.approx(float(value), abs=1e-5)
            else:  # label, prediction, group and the subgroup metadata: the same columns
                assert fresh[image_id][key] == value, key


def test_predict_a_folder_of_new_images(short_run, tmp_path):
    """``--images``: unlabeled pictures without metadata; each row's probabilities are the model's
    on that file with every metadata field encoded as missing."""
    import shutil

    from datamodules.dataset import load_rgb
    from datamodules.metadata import MetadataEncoder
    from datamodules.synthetic import MASK_FOLDER
    from datamodules.transforms import build_transforms
    from experiments.predict import predict
    from lightning_modules.modules.loading import load_module, read_checkpoint

    logged = list(csv.DictReader(open(short_run / "predictions.csv")))[:3]
    config = yaml.safe_load((short_run / "config.yaml").read_text())["data"]
    source = Path(config["data_dir"])
    folder = tmp_path / "new"
    folder.mkdir()
    for k, row in enumerate(logged):
        (path,) = [p for p in source.rglob(f"{row['image_id']}.png") if MASK_FOLDER not in p.parts]
        shutil.copy(path, folder / f"visit{k}.png")
    best = next((short_run / "checkpoints").glob("best-epoch*.ckpt"))
    out = predict(str(best), images=str(folder), num_workers=0, accelerator="cpu")
    assert out == short_run / "predictions_images.csv"
    rows = list(csv.DictReader(open(out)))
    assert [r["image_id"] for r in rows] == ["visit0", "visit1", "visit2"]
    assert "label" not in rows[0]

    checkpoint = read_checkpoint(best)
    module = load_module(best)
    encoder = MetadataEncoder.from_state_dict(checkpoint["LesionDataModule"]["encoder"])
    hp = checkpoint["datamodule_hyper_parameters"]
    transform = build_transforms(False, hp["image_size"], hp["augment"], hp["normalize_mean"], hp["normalize_std"])
    images = torch.stack([transform(image=load_rgb(folder / f"visit{k}.png"))["image"] for k in range(3)])
    meta = torch.from_numpy(np.stack([encoder.encode({})] * 3))
    assert meta[:, encoder.feature_names.index("age=<missing>")].eq(1).all()
    assert module.temperature != 1.0  # the run was calibrated: predict divides the logits by it
    with torch.no_grad():
        expected = (module(images, meta) / module.temperature).softmax(1).numpy()
    names = module.class_names
    got = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    assert np.allclose(got, expected, atol=1e-5)


def test_predict_unlabeled_test_set_checks_the_models_columns(short_run, tmp_path):
    from datamodules.records import DatasetError
    from experiments.predict import predict
    from tests.dataset_writers import write_isic2019_test

    write_isic2019_test(tmp_path, n=2)
    best = next((short_run / "checkpoints").glob("best-epoch*.ckpt"))
    # A PAD-style model reads `age`, `region`, ...; the ISIC 2019 test metadata has other columns.
    with pytest.raises(DatasetError, match=r"uses metadata column\(s\) \['age'.*ISIC_2019_Test_Metadata.csv lacks"):
        predict(str(best), dataset="isic2019", data_dir=str(tmp_path), split="unlabeled", num_workers=0,
                accelerator="cpu")


def test_trainer_writes_checkpoints_atomically(tmp_path, synthetic_cache):
    from experiments.cli import DermCLI
    from lightning_modules.utils.atomic_io import AtomicCheckpointIO

    cli = DermCLI(args=quick_args(REPO / "experiments" / "metablock.yaml", tmp_path, synthetic_cache, "--run.wandb=false"))
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_callbacks_come_from_the_config_in_order(tmp_path, synthetic_cache):
    """base.yaml's list, ``checkpoint`` and ``early_stopping`` before the checkpoint callbacks, one
    added and one left out by name; the callbacks that need the run's name and resume command
    get them from the CLI."""
    from experiments.cli import DermCLI
    from experiments.net_options import ConfigError
    from lightning_modules.callbacks.interruption import ResumableInterruption

    stop = json.dumps({"class_path": "tests.test_resume.StopBeforeEpoch", "init_args": {"epoch": 9}})
    args = quick_args(REPO / "experiments" / "metablock.yaml", tmp_path, synthetic_cache, "--run.wandb=false",
                      f"--trainer.callbacks+={stop}", "--run.drop_callbacks=[AttentionMapLogger]",
                      "--early_stopping.init_args.patience=5", "--checkpoint.save_top_k=3")  # fmt: skip
    cli = DermCLI(args=args)
    names = [type(c).__name__ for c in cli.trainer.callbacks if type(c).__module__.split(".")[0] != "lightning"
             or type(c).__name__ in ("LearningRateMonitor", "EarlyStopping")]  # not Lightning's progress bar, summary
    assert names == ["EpochSeeds", "MidEpochMetrics", "LearningRateMonitor", "EvaluationFigures", "ResultsWriter",
                     "WandbPanels", "EarlyStopping", "StopBeforeEpoch", "SaveRunConfig", "RunCheckpoint",
                     "ResumableInterruption"]  # fmt: skip
    checkpoint, stopping = cli.trainer.checkpoint_callback, cli.trainer.early_stopping_callback
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.save_top_k) == ("val/auroc", "max", 3)
    assert (stopping.monitor, stopping.mode, stopping.patience) == ("val/auroc", "max", 5)
    (interruption,) = [c for c in cli.trainer.callbacks if isinstance(c, ResumableInterruption)]
    assert interruption.ckpt_path == str(cli.run_dir / "checkpoints" / "interrupted.ckpt")
    assert interruption.resume_command == "make train EXP=metablock RESUME={ckpt}"
    assert cli.trainer.default_root_dir == str(cli.run_dir)
    with pytest.raises(ConfigError, match=r"--run.drop_callbacks: \['Nope'\] not in trainer.callbacks"):
        DermCLI(args=quick_args(REPO / "experiments" / "metablock.yaml", tmp_path, synthetic_cache,
                                "--run.wandb=false", "--run.drop_callbacks=[Nope]"))  # fmt: skip


def test_protopnet_under_ddp_looks_for_unused_parameters(tmp_path, synthetic_cache, caplog):
    """ProtoPNet freezes its backbone in warm-up: a DDP run, asked for or chosen by ``auto``, gets
    the find-unused-parameters variant; one process stays as it is."""
    import logging

    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    from experiments.cli import DermCLI
    from experiments.strategy import find_unused_variant

    assert find_unused_variant("ddp", 2) == "ddp_find_unused_parameters_true"
    assert find_unused_variant("ddp_spawn", 2) == "ddp_spawn_find_unused_parameters_true"
    assert find_unused_variant("auto", 4) == "ddp_find_unused_parameters_true"
    assert find_unused_variant("auto", 1) is None and find_unused_variant("ddp_find_unused_parameters_false", 2) is None
    assert find_unused_variant(DDPStrategy(), 2) is None  # a strategy object is the user's own
    config = REPO / "experiments" / "protopnet.yaml"
    with caplog.at_level(logging.INFO):
        cli = DermCLI(args=quick_args(config, tmp_path, synthetic_cache, "--run.wandb=false",
                                      "--trainer.accelerator=cpu", "--trainer.devices=2"))  # fmt: skip
    assert isinstance(cli.trainer.strategy, DDPStrategy) and cli.trainer.world_size == 2
    assert "ProtoPNetModule freezes parameters in some steps: strategy 'auto' -> 'ddp_find_unused_parameters_true'" \
        in caplog.text
    one = DermCLI(args=quick_args(config, tmp_path, synthetic_cache, "--run.wandb=false", "--trainer.accelerator=cpu"))
    assert isinstance(one.trainer.strategy, SingleDeviceStrategy)


def test_mask_regulariser_is_logged_and_refuses_data_without_masks(tmp_path, synthetic_cache):
    config = REPO / "experiments" / "soft_attention.yaml"
    limits = ("--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
              "--run.test=false", "--run.wandb=false", "--model.init_args.mask_loss_weight=0.01")  # fmt: skip
    run_dir = train(quick_args(config, tmp_path, synthetic_cache, *limits))
    with open(run_dir / "metrics.csv") as handle:
        values = [float(r["train/mask_loss"]) for r in csv.DictReader(handle) if r.get("train/mask_loss")]
    assert len(values) == 1 and 0.0 < values[0] <= 1.0  # a Dice loss
    with pytest.raises(ValueError, match="mask_loss_weight=0.01 needs lesion masks"):
        train(quick_args(config, tmp_path, synthetic_cache, *limits, "--data.load_masks=false"))


def test_resume_continues_in_the_same_run_folder(tmp_path, synthetic_cache):
    config = REPO / "experiments" / "metablock.yaml"
    limits = ("--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--run.test=false",
              "--trainer.enable_progress_bar=false")  # fmt: skip
    run_dir = train(quick_args(config, tmp_path, synthetic_cache, "--trainer.max_epochs=1", *limits))
    last = run_dir / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=True)
    wandb_id = (run_dir / "wandb_id.txt").read_text()
    # As `make train EXP=metablock RESUME=...` does it: only the experiment config and the resume
    # path; the run's own config.yaml supplies its data settings (small cache, 32 px).
    resumed = train(["--config", str(config), f"--resume={last}", "--trainer.max_epochs=2", *limits])
    assert resumed == run_dir
    second = torch.load(last, map_location="cpu", weights_only=True)
    assert (first["epoch"], second["epoch"]) == (0, 1)
    assert second["global_step"] == 2 * first["global_step"]
    positions = first["train_position"], second["train_position"]  # written by the EpochSeeds callback
    assert positions == ([1, 0], [2, 0])  # the next epoch, none of its batches done
    assert second["LesionDataModule"] == first["LesionDataModule"]
    assert len(list((tmp_path / "metablock").iterdir())) == 1
    with open(run_dir / "metrics.csv") as handle:  # the epoch before the interruption is kept
        epochs = {int(r["epoch"]) for r in csv.DictReader(handle) if r.get("val/loss")}
    assert epochs == {0, 1}
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["image_size"] == 32 and saved["trainer"]["max_epochs"] == 2
    assert saved["resume"] is None and saved["run"]["dir"] is None  # re-running it starts afresh
    assert (run_dir / "wandb_id.txt").read_text() == wandb_id and len(wandb_id) == 8
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}"))) == 2  # one W&B run, two sessions


def test_resume_refuses_other_data(tmp_path, synthetic_cache):
    config = REPO / "experiments" / "metablock.yaml"
    run_dir = train(quick_args(config, tmp_path, synthetic_cache, "--trainer.max_epochs=1", "--run.wandb=false",
                               "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--run.test=false"))
    with pytest.raises(ValueError, match=r"data.fold: 0 -> 1"):
        train(["--config", str(config), f"--resume={run_dir / 'checkpoints' / 'last.ckpt'}", "--data.fold=1"])


def test_run_dir_is_never_reused(tmp_path, synthetic_cache):
    config = REPO / "experiments" / "metablock.yaml"
    args = quick_args(config, tmp_path, synthetic_cache, "--trainer.fast_dev_run=false", "--trainer.max_epochs=1",
                      "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--run.wandb=false",
                      "--run.test=false", f"--run.dir={tmp_path / 'fixed'}")  # fmt: skip
    train(args)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(args)


def test_make_train_passes_data_choice_and_overrides():
    out = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "train", "EXP=metablock", "DATA=pad_ufes20", "DATA_DIR=/data/pad",
         "ARGS=--trainer.max_epochs=2", "RESUME=runs/x/checkpoints/last.ckpt"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    line = next(l for l in out.splitlines() if "experiments.train" in l)
    assert "--config experiments/metablock.yaml" in line
    assert "--data.dataset=pad_ufes20 --config experiments/data/pad_ufes20.yaml" in line
    assert "--data.data_dir=/data/pad" in line and line.rstrip().endswith("--trainer.max_epochs=2")
    assert "--resume=runs/x/checkpoints/last.ckpt" in line


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["metablock", "abe"])
def test_ddp_on_two_cpu_processes(experiment, tmp_path, synthetic_cache):
    """Lightning's own DDP (two CPU processes): one run folder, de-duplicated test outputs. ABE-M's
    P x K batch sampler takes its rank from the DistributedSampler Lightning injects."""
    args = quick_args(REPO / "experiments" / f"{experiment}.yaml", tmp_path, synthetic_cache,
                      "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2",
                      "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2")
    subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, check=True, timeout=900)
    (run_dir,) = list((tmp_path / experiment).iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if experiment == "abe":
        assert 0.0 <= metrics["test"]["recall@1"] <= metrics["test"]["recall@8"] <= 1.0
    from datamodules.lesion_datamodule import LesionDataModule

    dm = LesionDataModule(data_dir=str(synthetic_cache), source_options=SMALL_SYNTHETIC)
    assert metrics["test"]["n_images"] == len(dm.records("test"))
    with open(run_dir / "predictions.csv") as handle:
        ids = [r["image_id"] for r in csv.DictReader(handle)]
    assert sorted(ids) == sorted(r.image_id for r in dm.records("test"))


@pytest.mark.slow
def test_default_metablock_experiment_reaches_its_target_and_resumes_into_the_same_run(tmp_path):
    """`make train EXP=metablock` as a newcomer runs it (fresh data cache, default settings), and
    the same run preempted (SIGTERM) in the middle of its second epoch and resumed: the two agree
    exactly, every logged metric and every final weight."""
    from tests.test_interruption import run_environment
    from tests.test_resume import assert_same_run, final_weights, val_rows

    env = {**run_environment(), "DERMATTN_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "experiments.train", "--config", "experiments/metablock.yaml",
               "--trainer.enable_progress_bar=false"]  # fmt: skip
    subprocess.run([*command, f"--run.root={tmp_path / 'whole'}"], cwd=REPO, env=env, check=True, timeout=1800)
    (whole,) = list((tmp_path / "whole" / "metablock").iterdir())
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["test"]["auroc"] >= 0.85
    assert metrics["test"]["n_images"] > 300

    marker = tmp_path / "paused"
    pause = {"class_path": "tests.interrupt_helpers.PauseAtStep", "init_args": {"step": 60, "marker": str(marker)}}
    process = subprocess.Popen([*command, f"--run.root={tmp_path / 'preempted'}",
                                f"--trainer.callbacks+={json.dumps(pause)}"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 1200
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.2)
    epoch, batch = map(int, marker.read_text().split())
    assert epoch >= 1 and batch > 0  # inside an epoch, not at its start
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    (preempted,) = list((tmp_path / "preempted" / "metablock").iterdir())
    subprocess.run([*command, f"--resume={preempted / 'checkpoints' / 'interrupted.ckpt'}"], cwd=REPO, env=env,
                   check=True, timeout=1800)  # fmt: skip

    a, b = final_weights(whole), final_weights(preempted)
    weights = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())
    rows_a, rows_b = (list(csv.DictReader((d / "metrics.csv").open())) for d in (whole, preempted))
    logged = max(abs(float(x[k]) - float(y[k])) for x, y in zip(rows_a, rows_b) for k in x if x[k] and y[k])
    test_a, test_b = (json.loads((d / "metrics.json").read_text())["test"] for d in (whole, preempted))
    scores = max(abs(test_a[k] - test_b[k]) for k in test_a if isinstance(test_a[k], (int, float)))
    print(f"max abs difference: final weights {weights}, metrics.csv {logged}, test metrics {scores}")
    epochs = len(val_rows(whole))
    assert_same_run(whole, preempted, epochs=epochs)


@pytest.mark.parametrize("experiment,maps", [("attn_vgg", ("attn1", "attn2")), ("soft_attention", ("soft",))])
def test_attention_experiment_artefacts(experiment, maps, tmp_path, synthetic_cache):
    """Attention maps every validation epoch (PNG grid + W&B panel); lesion mass in metrics.json."""
    run_dir = train(quick_args(REPO / "experiments" / f"{experiment}.yaml", tmp_path, synthetic_cache,
                               "--trainer.max_epochs=2", "--trainer.limit_train_batches=3",
                               "--trainer.limit_val_batches=2"))  # fmt: skip
    from datamodules.lesion_datamodule import LesionDataModule

    val = LesionDataModule(data_dir=str(synthetic_cache), source_options=SMALL_SYNTHETIC).records("val")
    shown = sum(min(2, sum(r.label == k for r in val)) for k in range(6))  # two per class (fewer if rare)
    for name in maps:
        assert sorted(p.name for p in (run_dir / "attention").glob(f"*_{name}.png")) == [
            f"epoch000_{name}.png", f"epoch001_{name}.png"]
        media = next((run_dir / "wandb").glob("offline-run-*")) / "files" / "media" / "images" / "attention"
        assert len(list(media.glob(f"{name}_*.png"))) == 2 * shown  # every epoch, every chosen image
    table = next(media.parent.parent.glob("table/test/predictions_*.table.json"))
    assert json.loads(table.read_text())["columns"][:3] == ["image_id", "image", "attention"]  # overlay per image
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    for key in ("lesion_mass", "gradcam_lesion_mass", *(f"lesion_mass_{m}" for m in maps)):
        assert 0.0 <= test[key] <= 1.0, key
    with open(run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/lesion_mass")]
    assert len(rows) == 2


def test_abe_run_reports_retrieval_and_knn_and_retrieves(tmp_path, synthetic_cache):
    run_dir = train(quick_args(REPO / "experiments" / "abe.yaml", tmp_path, synthetic_cache, "--trainer.max_epochs=1",
                               "--trainer.limit_train_batches=3", "--run.wandb=false"))  # fmt: skip
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    for k in (1, 2, 4, 8):
        assert 0.0 <= test[f"recall@{k}"] <= 1.0
    assert test["recall@1"] <= test["recall@2"] <= test["recall@4"] <= test["recall@8"]
    assert 0.0 <= test["auroc"] <= 1.0 and 0.0 <= test["bacc"] <= 1.0
    assert sorted(p.name for p in (run_dir / "attention").glob("*.png"))[0] == "epoch000_learner0.png"

    from experiments.retrieve import retrieve

    from datamodules.lesion_datamodule import LesionDataModule

    query = LesionDataModule(data_dir=str(synthetic_cache), source_options=SMALL_SYNTHETIC).records("test")[0]
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    neighbours = retrieve(str(best), str(query.image_path), k=3, out=str(tmp_path / "n.png"))
    assert len(neighbours) == 3 and (tmp_path / "n.png").stat().st_size > 0
    assert [n["distance"] for n in neighbours] == sorted(n["distance"] for n in neighbours)
