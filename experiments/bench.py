"""Throughput of an experiment's training step and data pipeline, in images/s.

    python -m experiments.bench --config experiments/metablock.yaml [--steps 20] [--batches 30]

Reports rates and ratios, never pass/fail times (machines are noisy): training images/s (forward,
loss, backward, optimiser step on a fixed batch), inference images/s, and data-loading images/s
(decode + augment + collate through the experiment's DataLoader, and in a single process).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from experiments.cli import DermCLI  # noqa: E402


def images_per_second(loader: DataLoader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


def training_images_per_second(module, batch: dict, steps: int) -> tuple[float, float]:
    optimizer = module.optimizer_factory(module.parameter_groups())
    module.train()
    n = batch["image"].shape[0]

    def step() -> None:
        loss = module.criterion(module(batch["image"], batch["meta"]), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    train_rate = n * steps / (time.perf_counter() - start)
    module.eval()
    with torch.inference_mode():
        module(batch["image"], batch["meta"])
        start = time.perf_counter()
        for _ in range(steps):
            module(batch["image"], batch["meta"])
        infer_rate = n * steps / (time.perf_counter() - start)
    return train_rate, infer_rate


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/metablock.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--batches", type=int, default=30, help="timed data-loading batches")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. --data.batch_size=64")
    args, unknown = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cli = DermCLI(args=["--config", args.config, f"--run.dir={tmp}", "--run.wandb=false",
                            *args.overrides, *unknown])  # fmt: skip
        module, datamodule = cli.model, cli.datamodule
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        batch = next(iter(loader))
        train_rate, infer_rate = training_images_per_second(module, batch, args.steps)
        load_rate = images_per_second(loader, args.batches)
        single = DataLoader(datamodule.datasets["train"], batch_size=loader.batch_size, shuffle=True, num_workers=0)
        single_rate = images_per_second(single, max(5, args.batches // 3))
    hp = datamodule.hparams
    result = {
        "config": args.config,
        "backbone": (cli.config.model.init_args.net.get("init_args") or {}).get("backbone"),
        "image_size": hp.image_size,
        "batch_size": hp.batch_size,
        "torch_threads": torch.get_num_threads(),
        "train_images_per_s": round(train_rate, 1),
        "inference_images_per_s": round(infer_rate, 1),
        "data_loading_images_per_s": round(load_rate, 1),
        "data_loading_workers": hp.num_workers,
        "data_loading_single_process_images_per_s": round(single_rate, 1),
        "data_to_train_ratio": round(load_rate / train_rate, 2),
    }
    print(f"\n== bench: {args.config} ({result['backbone']}, {hp.image_size}px, batch {hp.batch_size}, "
          f"{result['torch_threads']} torch threads) ==")
    print(f"training           {train_rate:8.1f} images/s  (forward + backward + step, fixed batch)")
    print(f"inference          {infer_rate:8.1f} images/s")
    print(f"data loading       {load_rate:8.1f} images/s  ({hp.num_workers} workers, decode + augment + collate)")
    print(f"data loading       {single_rate:8.1f} images/s  (single process)")
    print(f"data / training    {load_rate / train_rate:8.2f}x   (> 1: the pipeline keeps the model fed)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
