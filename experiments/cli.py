"""LightningCLI for dermattn: YAML experiment configs on a shared base, run folders, loggers.

Each run writes to its own folder ``runs/<run.name>/<timestamp>-s<seed>/``::

    config.yaml        the resolved configuration (re-run it with --config)
    metrics.csv        every logged scalar (CSV logger, always on)
    checkpoints/       best-epochXXX.ckpt (by the model's `monitor`) and last.ckpt
    metrics.json       test scores of the best checkpoint
    predictions.csv    class probabilities for every test image
    test_*.png         confusion matrix and ROC curves of the test split
    wandb/             the W&B run (offline unless WANDB_MODE=online; `wandb sync` later)

Resuming (``--resume path/to/last.ckpt``) continues in the checkpoint's run folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from datamodules.lesion_datamodule import LesionDataModule
from experiments.loggers import make_csv_logger, make_wandb_logger
from lightning_modules.callbacks.evaluation_figures import EvaluationFigures
from lightning_modules.callbacks.test_results import TestResultsWriter
from lightning_modules.classifier import LesionClassifier

EXPERIMENTS_DIR = Path(__file__).resolve().parent
BASE_CONFIG = EXPERIMENTS_DIR / "base.yaml"
RUN_DIR_ENV = "DERMATTN_RUN_DIR"  # hands rank 0's run folder to the DDP worker processes


class DermCLI(LightningCLI):
    def __init__(self, args=None, **kwargs):
        self.run_dir: Optional[Path] = None
        super().__init__(
            LesionClassifier,
            LesionDataModule,
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"default_config_files": [str(BASE_CONFIG)]},
            seed_everything_default=42,
            args=args,
            run=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run.name", type=str, default="experiment", help="run folder: runs/<name>/...")
        parser.add_argument("--run.root", type=str, default="runs", help="where run folders go")
        parser.add_argument("--run.dir", type=Optional[str], default=None, help="exact run folder (multi-node)")
        parser.add_argument("--run.wandb", type=bool, default=True, help="log to Weights & Biases")
        parser.add_argument("--run.wandb_project", type=str, default="dermattn")
        parser.add_argument("--run.patience", type=Optional[int], default=15, help="early stopping; null: off")
        parser.add_argument("--run.test", type=bool, default=True, help="test the best checkpoint after fit")
        parser.add_argument("--resume", type=Optional[str], default=None, help="last.ckpt to continue from")
        for name in ("num_classes", "meta_dim", "class_names", "class_weights"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config
        self.run_dir = resolve_run_dir(config.run.root, config.run.name, config.run.dir, config.resume,
                                       config.seed_everything)
        os.environ[RUN_DIR_ENV] = str(self.run_dir)
        config.trainer.default_root_dir = str(self.run_dir)

    def instantiate_trainer(self, **kwargs):
        run, run_dir = self.config.run, self.run_dir
        monitor = self.model.hparams.get("monitor", "val/auroc")
        mode = "min" if "loss" in monitor else "max"
        loggers = [make_csv_logger(run_dir)]
        if run.wandb:
            loggers.append(make_wandb_logger(run_dir, run.name, run.wandb_project))
        callbacks = list(self.config_init.trainer.get("callbacks") or [])
        callbacks += [
            ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="best-epoch{epoch:03d}",
                            auto_insert_metric_name=False, monitor=monitor, mode=mode, save_top_k=1,
                            save_last=True),
            LearningRateMonitor(logging_interval="epoch"),
            EvaluationFigures(dirpath=str(run_dir)),
            TestResultsWriter(str(run_dir), extra={"experiment": run.name, "run_dir": str(run_dir),
                                                   **describe_data(self.datamodule)}),
        ]  # fmt: skip
        if run.patience is not None:
            callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=run.patience))
        return super().instantiate_trainer(logger=loggers, callbacks=callbacks, **kwargs)


def resolve_run_dir(root: str, name: str, explicit: Optional[str], resume: Optional[str], seed) -> Path:
    if explicit:
        path = Path(explicit)
    elif resume:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: checkpoint {ckpt} does not exist")
        path = ckpt.resolve().parent.parent  # <run>/checkpoints/last.ckpt
    elif os.environ.get(RUN_DIR_ENV) and os.environ.get("LOCAL_RANK", "0") != "0":
        path = Path(os.environ[RUN_DIR_ENV])  # a DDP worker joins rank 0's run
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / name / f"{stamp}-s{seed}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(root) / name / f"{stamp}-s{seed}-{suffix}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def describe_data(datamodule: LesionDataModule) -> dict:
    hp = datamodule.hparams
    return {"dataset": hp.dataset, "data_dir": str(datamodule.table.csv_path.parent), "fold": hp.fold,
            "n_folds": hp.n_folds, "split_seed": hp.split_seed, "meta_features": datamodule.encoder.feature_names}
