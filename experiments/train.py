"""``python -m experiments.train --config experiments/metablock.yaml [--key=value ...]``

Fits, then tests the best checkpoint once (metrics.json, predictions.csv in the run folder).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from lightning.pytorch.utilities import rank_zero_info  # noqa: E402

from experiments.cli import RUN_DIR_ENV, DermCLI  # noqa: E402


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
    finally:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            os.environ.pop(RUN_DIR_ENV, None)
        finish_wandb()
    rank_zero_info(f"finished: {cli.run_dir}")
    return cli.run_dir


if __name__ == "__main__":
    main()
