"""``python -m experiments.train --config experiments/metablock.yaml [--key=value ...]``

Fits, then tests the best checkpoint once (metrics.json, predictions.csv in the run folder).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import signal  # noqa: E402
from pathlib import Path  # noqa: E402

from lightning.pytorch.utilities import rank_zero_info  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402

from datamodules.atomic_files import DiskFullError, out_of_space  # noqa: E402
from datamodules.entry_point import advice_of, advise  # noqa: E402
from experiments.cli import DermCLI  # noqa: E402
from experiments.run_folder import stop_sharing  # noqa: E402
from lightning_modules.callbacks.interruption import ResumableInterruption  # noqa: E402
from lightning_modules.utils.atomic_io import intact_checkpoints  # noqa: E402


def finish_wandb() -> None:
    """Close the W&B run so the next run in this process (tests, notebooks) starts its own."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def main(args=None):
    cli = DermCLI(args=args)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    summary = {k: v for k, v in datamodule.summary().items() if k != "meta_features"}
    rank_zero_info(f"run folder: {cli.run_dir}\ndata: {summary}, {datamodule.meta_dim} metadata features")
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cli.config.resume)
        if cli.config.run.test and not trainer.interrupted:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
    except SIGTERMException as err:
        # Preempted (the checkpoint is saved): exit non-zero, as a killed job would, so that
        # schedulers requeue it and scripts notice. A Ctrl-C held through validation ends the
        # same way and exits as Lightning's own Ctrl-C handling does (1).
        held = [c.stopped_by for c in trainer.callbacks if isinstance(c, ResumableInterruption)]
        end(cli, trainer)
        raise SystemExit(1 if held == ["Ctrl-C"] else 128 + signal.SIGTERM) from err
    except BaseException as err:
        end(cli, trainer, failed=True)
        if out_of_space(err) and not isinstance(err, DiskFullError):  # a writer other than ours (a log file)
            full = DiskFullError.from_error(err, cli.run_dir)
            full.strerror += "; " + intact_checkpoints(cli.run_dir / "checkpoints")
            advise(full, advice_of(err) or "")
            raise full from err
        if isinstance(err, DiskFullError) and err.path.suffix != ".ckpt":  # checkpoint writes list them already
            err.strerror += "; " + intact_checkpoints(cli.run_dir / "checkpoints")
        raise
    end(cli, trainer)
    rank_zero_info(f"finished: {cli.run_dir}")
    sync = wandb_sync_command(cli.run_dir)
    if sync:
        rank_zero_info(f"W&B (offline): upload with `{sync}`")
    return cli.run_dir


def end(cli: DermCLI, trainer, failed: bool = False) -> None:
    """Close the run: W&B first (it writes into the folder), then the folder itself, which a run
    that failed before its first training step removes (a bad option or bad data, not a run)."""
    stop_sharing()
    finish_wandb()
    cli.end_run(failed=failed, trained=trainer.global_step > 0)


def wandb_sync_command(run_dir: Path) -> str:
    """The one ``wandb sync`` that uploads every offline part of the run, oldest first (a resumed
    run writes one ``offline-run-*`` folder per session, all with the run's id)."""
    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    return "wandb sync " + " ".join(str(p) for p in parts) if parts else ""


if __name__ == "__main__":
    from datamodules.entry_point import run

    run(main)
