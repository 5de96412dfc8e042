"""LightningCLI for dermattn: YAML experiment configs on a shared base, run folders, loggers.

Each run writes to its own folder ``runs/<run.name>/<timestamp>-s<seed>/``::

    config.yaml        the resolved configuration (re-run it with --config)
    metrics.csv        every logged scalar (CSV logger, always on)
    checkpoints/       best-epochXXX.ckpt (by the model's `monitor`) and last.ckpt
    metrics.json       test scores of the best checkpoint and its evaluation report (docs/evaluation.md)
    predictions.csv    class probabilities, group and subgroup metadata of every test image
    val_predictions.csv  the same for the validation split, scored by the tested model
    subgroups.csv/.md  the report per subgroup (skin type, sex, age band, site)
    test_*.png         confusion matrix, ROC curves and reliability diagram of the test split
    wandb/             the W&B run (offline unless WANDB_MODE=online; `wandb sync` later)

Resuming (``--resume path/to/last.ckpt``) continues in the checkpoint's run folder with that
run's own ``config.yaml`` (command-line overrides such as ``--trainer.max_epochs`` still apply;
changing the data or its split is refused).

The model is ``model.class_path`` (a :class:`~lightning_modules.modules.base.DermModule`) with its
network in ``model.init_args.net``; a network option may be given short
(``--model.init_args.backbone=...`` for ``--model.init_args.net.init_args.backbone=...``).

Callbacks are ``trainer.callbacks`` (``experiments/base.yaml`` lists the defaults;
``--trainer.callbacks+=...`` adds one, ``--run.drop_callbacks=[WandbPanels]`` leaves one out) plus
``checkpoint`` (``RunCheckpoint``, a ModelCheckpoint whose last.ckpt is every epoch's) and
``early_stopping`` (EarlyStopping, ``null`` turns it off), which watch the model's ``monitor``
unless told otherwise (``experiments/run_callbacks.py``). Callbacks find the run folder in
``trainer.default_root_dir``; the CLI hands them the run's name and resume command
(:class:`~lightning_modules.callbacks.run_context.RunContext`), with the test report's options
(``--eval.subgroups``, ``--eval.age_bands``, ``--eval.positive``, ``--eval.n_boot``, ``--eval.seed``)
and ``--calibrate=temperature``.
"""

from __future__ import annotations

import re
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Literal, Optional, Sequence

from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback, instantiate_class
from lightning.pytorch.plugins import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from datamodules.lesion_datamodule import LesionDataModule
from experiments.loggers import make_csv_logger, make_wandb_logger
from experiments.net_options import ConfigError, UnknownOptionError, closest, expand_net_shorthands
from experiments.resume import check_same_data, resumed_run_config, with_run_config
from experiments.run_callbacks import hand_over, in_order, resolve_monitor, without
from experiments.run_folder import discard_if_unused, is_global_zero_process, resolve_run_dir, share_with_workers
from experiments.run_lock import RunLock
from experiments.strategy import find_unused_variant
from experiments.trainer_options import DermArgumentParser
from lightning_modules.callbacks.checkpointing import RunCheckpoint
from lightning_modules.callbacks.run_context import RunContext
from lightning_modules.evaluation.options import EvaluationOptions
from lightning_modules.modules.base import DermModule
from lightning_modules.nets.backbones import normalisation_mismatch
from lightning_modules.utils.atomic_io import AtomicCheckpointIO

EXPERIMENTS_DIR = Path(__file__).resolve().parent
BASE_CONFIG = EXPERIMENTS_DIR / "base.yaml"


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config without the one-off ``resume`` / ``run.dir`` settings, so that
    ``--config <run>/config.yaml`` starts a fresh run with the same settings."""

    def __init__(self, parser, config, *args, **kwargs):
        config = config.clone()
        config.resume = None
        config.run.dir = None
        config.checkpoint.dirpath = None  # a re-run writes into its own run folder
        super().__init__(parser, config, *args, **kwargs)


class DermCLI(LightningCLI):
    def __init__(self, args: Optional[Sequence[str]] = None, **kwargs):
        self.run_dir: Optional[Path] = None
        self.created_run_dir = False
        self.run_lock: Optional[RunLock] = None
        args = list(sys.argv[1:] if args is None else args)
        self.resumed_config = resumed_run_config(args)
        if self.resumed_config is not None:  # the run's own settings, then the new overrides
            args = with_run_config(args, self.resumed_config, BASE_CONFIG)
        args = expand_net_shorthands(args, [BASE_CONFIG])
        try:
            with warnings.catch_warnings():
                # The arguments are always passed explicitly (rewritten above), never read from
                # sys.argv by Lightning, so its warning about giving both does not apply.
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
                super().__init__(
                    DermModule,
                    LesionDataModule,
                    parser_class=DermArgumentParser,  # `--trainer.limit_train_batches=1` is one batch
                    subclass_mode_model=True,
                    save_config_callback=SaveRunConfig,
                    save_config_kwargs={"overwrite": True},
                    # No abbreviations: `--trainer.max_epoch` must not silently mean max_epochs.
                    parser_kwargs={"default_config_files": [str(BASE_CONFIG)], "allow_abbrev": False,
                                   "exit_on_error": False},
                    seed_everything_default=42,
                    auto_configure_optimizers=False,  # modules take optimizer/scheduler factories
                    args=args,
                    run=False,
                    **kwargs,
                )
        except ArgumentError as err:
            self.end_run(failed=True)
            raise explain_parse_error(err, getattr(self, "parser", None)) from None
        except BaseException as err:
            self.end_run(failed=True)  # no empty run folder is left behind
            cause = unwrapped(err)
            if cause is not err:
                raise cause from None
            raise

    def resume_command(self) -> str:
        """How to resume this run, as the user started it (``make train EXP=...`` for a config in
        experiments/), with ``{ckpt}`` for the checkpoint."""
        for config in reversed(self.config.get("config") or []):
            path = Path(str(config)).resolve()
            if path.is_relative_to(EXPERIMENTS_DIR) and path.parent != EXPERIMENTS_DIR / "data":
                return f"make train EXP={path.relative_to(EXPERIMENTS_DIR).with_suffix('')} RESUME={{ckpt}}"
        return "python -m experiments.train --resume {ckpt}"

    def end_run(self, failed: bool = False, trained: bool = False) -> None:
        """Release the run folder; after a failure before training (``trained``: whether a
        training step was taken), remove it if this run created it."""
        if failed:
            discard_if_unused(self.run_dir, self.created_run_dir, trained)
        if self.run_lock is not None:
            self.run_lock.release()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run.name", type=str, default="experiment", help="run folder: runs/<name>/...")
        parser.add_argument("--run.root", type=str, default="runs", help="where run folders go")
        parser.add_argument("--run.dir", type=Optional[str], default=None,
                            help="exact (new) run folder, e.g. for multi-node jobs")
        parser.add_argument("--run.wandb", type=bool, default=True, help="log to Weights & Biases")
        parser.add_argument("--run.wandb_project", type=str, default="dermattn")
        parser.add_argument("--run.wandb_group", type=Optional[str], default=None,
                            help="W&B group (e.g. the folds of one cross-validation)")
        parser.add_argument("--run.wandb_job_type", type=str, default="train", help="W&B job type: train, cv, compare")
        parser.add_argument("--run.test", type=bool, default=True, help="test the best checkpoint after fit")
        parser.add_argument("--run.drop_callbacks", type=list[str], default=[],
                            help="class names of trainer.callbacks to leave out, e.g. [WandbPanels]")
        parser.add_argument("--resume", type=Optional[str], default=None, help="last.ckpt to continue from")
        # The test report (docs/evaluation.md): --eval.subgroups='[fitspatrick, age]' --eval.positive='[MEL, BCC, SCC]'
        parser.add_class_arguments(EvaluationOptions, "eval", skip={"calibrate"}, instantiate=False)
        parser.add_argument("--calibrate", type=Literal["none", "temperature"], default="none",
                            help="temperature: after testing, store the temperature fitted on the validation "
                                 "split in the tested checkpoint; prediction applies it")
        for name in ("num_classes", "meta_dim", "class_names", "class_weights"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        # Plain groups, built by instantiate_trainer once the model can say what `monitor: auto` is.
        parser.add_class_arguments(RunCheckpoint, "checkpoint", fail_untyped=False, instantiate=False,
                                   sub_configs=True)  # fmt: skip
        parser.add_subclass_arguments(EarlyStopping, "early_stopping", required=False, fail_untyped=False,
                                      instantiate=False)  # fmt: skip

    def before_instantiate_classes(self) -> None:
        config = self.config
        if self.resumed_config is not None:
            check_same_data(self.resumed_config, config)
        model = config.model.init_args
        if config.data.balanced_sampler and model.get("weighted_loss", False):
            rank_zero_warn("balanced_sampler and weighted_loss both correct the class imbalance; "
                           "set --model.init_args.weighted_loss=false to correct it once")
        warn_normalisation_mismatch(model.net.get("init_args") or {}, config.data)

    def open_run_dir(self) -> None:
        """Create (or, resuming, find) the run folder and lock it. Called once the data and the
        model are built, so that a bad option or bad data is reported before the folder exists."""
        config = self.config
        self.run_dir, self.created_run_dir = resolve_run_dir(config.run.root, config.run.name, config.run.dir,
                                                             config.resume, config.seed_everything)
        if is_global_zero_process():  # the other processes of a DDP run join its folder
            try:
                self.run_lock = RunLock(self.run_dir).acquire()
            except BaseException:
                self.created_run_dir = False  # the folder is the other run's
                raise
        share_with_workers(self.run_dir)
        config.trainer.default_root_dir = str(self.run_dir)  # in config.yaml as before
        config.checkpoint.dirpath = config.checkpoint.dirpath or str(self.run_dir / "checkpoints")

    def evaluation_options(self) -> EvaluationOptions:
        config = self.config
        if config.calibrate != "none" and not config.run.test:
            raise ConfigError(f"--calibrate={config.calibrate} fits on the tested model: it needs --run.test=true")
        try:
            return EvaluationOptions(**config.eval.as_dict(), calibrate=config.calibrate)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def instantiate_trainer(self, **kwargs):
        config, model = self.config, self.model
        check_optimizer(model)
        self.open_run_dir()
        kwargs["default_root_dir"] = str(self.run_dir)
        loggers = [make_csv_logger(self.run_dir)]
        if config.run.wandb:
            net = config.model.init_args.net.class_path.rpartition(".")[2]
            split = "official" if config.data.split == "official" else f"fold{config.data.fold}"
            tags = [net, config.data.dataset, split]
            loggers.append(make_wandb_logger(self.run_dir, config.run.name, config.run.wandb_project,
                                             group=config.run.wandb_group, job_type=config.run.wandb_job_type,
                                             tags=tags))  # fmt: skip
        watching = []
        if config.early_stopping is not None:
            resolve_monitor(config.early_stopping.init_args, model)
            watching.append(instantiate_class((), config.early_stopping.as_dict()))
        resolve_monitor(config.checkpoint, model)  # in self.config too: config.yaml shows what was watched
        watching.append(RunCheckpoint(**config.checkpoint.as_dict()))
        listed = without(self.config_init.trainer.get("callbacks") or [], config.run.drop_callbacks)
        callbacks = in_order(listed, watching)
        hand_over(callbacks, RunContext(name=config.run.name, dir=str(self.run_dir),
                                        resume_command=self.resume_command(), evaluation=self.evaluation_options()))
        plugins = self.config_init.trainer.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())

        def build(**more):  # fresh lists: Lightning's CLI appends its config saver to the one it gets
            return super(DermCLI, self).instantiate_trainer(logger=list(loggers), callbacks=list(callbacks),
                                                            plugins=list(plugins), **kwargs, **more)  # fmt: skip

        trainer = build()
        if model.toggles_requires_grad:  # DDP must then look for parameters without gradients
            variant = find_unused_variant(config.trainer.strategy, trainer.world_size)
            if variant:
                rank_zero_info(f"{type(model).__name__} freezes parameters in some steps: strategy "
                               f"{config.trainer.strategy!r} -> {variant!r}")  # fmt: skip
                trainer = build(strategy=variant)
        return trainer


#: How jsonargparse words an error raised by a class it instantiates for an ``Optional[...]`` argument
#: (the model): the class's own error is its cause, after pages of the configuration.
UNION_WRAPPER = "Does not validate against any of the Union subtypes"


def unwrapped(err: BaseException) -> BaseException:
    """The error a class raised while the parser instantiated it, without the parser's wrapping."""
    while isinstance(err, ValueError) and str(err).startswith(UNION_WRAPPER) and err.__cause__ is not None:
        err = err.__cause__
    return err


def check_optimizer(model: DermModule) -> None:
    """Build the optimizer once on the model's parameters, so that arguments it refuses (a negative
    learning rate) are reported before the run folder exists rather than as training starts."""
    try:
        model.optimizer_factory(model.parameter_groups())
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--model.init_args.optimizer: {err}") from None


def explain_parse_error(err: ArgumentError, parser) -> ConfigError:
    """The parser's complaint as an error led by the offending key and the closest valid keys."""
    message = str(err)
    unknown = re.findall(r"--([\w.@]+)", message) if "nrecognized arguments" in message else []
    if not unknown or parser is None:
        return ConfigError(message)
    try:
        keys = [k for k in parser.get_defaults().keys() if not k.startswith("__")]
    except Exception:  # noqa: BLE001 - suggestions are a courtesy; the key is named either way
        keys = []
    lines = []
    for key in unknown:
        near = closest(key, keys)
        lines.append(f"unknown option --{key}" + (f"; did you mean {' or '.join('--' + k for k in near)}?" if near else ""))
    return UnknownOptionError("\n".join(lines))


def warn_normalisation_mismatch(net_args, data) -> None:
    """Pretrained features expect the normalisation they were trained with; a mismatch trains fine
    but wastes the pretraining, so say so before the first epoch."""
    backbone = net_args.get("backbone")
    if backbone and (net_args.get("pretrained") or net_args.get("weights_path")):
        problem = normalisation_mismatch(backbone, data.normalize_mean, data.normalize_std)
        if problem:
            rank_zero_warn(problem)
