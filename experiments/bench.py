"""Throughput of an experiment's training step and data pipeline, in images/s.

    python -m experiments.bench --config experiments/metablock.yaml [--steps 20] [--batches 30]

Reports rates and ratios, never pass/fail times (machines are noisy): training images/s (forward,
loss, backward, optimiser step on a fixed batch), inference images/s, and data-loading images/s
(decode + augment + collate through the experiment's DataLoader, and in a single process);
the training loop's overhead (a real ``Trainer.fit`` epoch with the run's module, metrics,
callbacks and loggers, validation off, against the bare loop on the same batches and threads);
and the full-resolution data path (decode + resize + the ``isic`` augmentation per worker, on
generated JPEGs of the real sizes, 1024 x 1024 and 6000 x 4000 at quality 90) at 224 and 512 px,
against the resized cache built for that size (``make preprocess SIZE=256`` for 224-px training,
``SIZE=512`` for 512), as JPEG (the default) and as PNG.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
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


class FixedBatches(torch.utils.data.Dataset):
    """Already collated batches, served as they are (``batch_size=None``): the loop is timed
    without the data pipeline."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def loop_overhead(cli, batches: list[dict]) -> tuple[float, float]:
    """``(Trainer.fit images/s, bare loop images/s)`` over the same batches, from the same
    weights: the fit runs the run's own trainer (module hooks, metrics, callbacks, loggers)."""
    module = cli.model
    bare = copy.deepcopy(module)
    optimizer = bare.optimizer_factory(bare.parameter_groups())
    bare.train()
    for warm_up in (True, False):
        start = time.perf_counter()
        for batch in batches[:2] if warm_up else batches:
            loss = bare.criterion(bare(batch["image"], batch["meta"]), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    bare_rate = sum(b["image"].shape[0] for b in batches) / (time.perf_counter() - start)
    loader = DataLoader(FixedBatches(batches[:2] + batches), batch_size=None, shuffle=False)
    timer = _EpochTimer(skip=2)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(module, train_dataloaders=loader)
    return timer.images / timer.seconds, bare_rate


class _EpochTimer(L.Callback):
    """Wall time and images of an epoch's training batches after the first ``skip`` (warm-up)."""

    def __init__(self, skip: int):
        self.skip, self.images, self.start, self.seconds = skip, 0, 0.0, float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.skip:
            self.start = time.perf_counter()
        if batch_idx >= self.skip:
            self.images += batch["image"].shape[0]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def synthetic_photo(width: int, height: int, seed: int) -> "np.ndarray":
    """A smooth random picture with a little noise: compresses like a photo, not like noise."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(40, 220, size=(max(2, height // 100), max(2, width // 100), 3), dtype=np.uint8)
    picture = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    picture += rng.integers(-6, 7, size=picture.shape, dtype=np.int16)
    return picture.clip(0, 255).astype(np.uint8)


#: Training size -> the cache a user builds for it (``make preprocess SIZE=...``): the smallest
#: round size above it, so that the random-resized crop still has pixels to spare.
CACHE_SIZE_FOR = {224: 256, 512: 512}
CACHE_FORMATS = ("jpeg", "png")


def full_resolution_rates(folder: Path, sizes=(224, 512), shapes=((1024, 1024), (6000, 4000)), files: int = 3,
                          images: int = 9) -> dict[str, float]:
    """Images/s of one worker's decode + resize + ``isic`` augmentation, per file size and
    training size, on generated JPEGs (quality 90) of the real datasets' sizes: from the
    originals (key ``"6000x4000@224"``) and from the cache built for that training size in each
    format (``"jpeg 256 cache 6000x4000@224"``)."""
    from PIL import Image

    from datamodules.dataset import LesionDataset
    from datamodules.image_cache import apply_cache, build_cache
    from datamodules.metadata import MetadataEncoder
    from datamodules.records import LesionRecord, LesionTable
    from datamodules.seeding import SampleKey
    from datamodules.transforms import build_transforms

    rates = {}
    for width, height in shapes:
        paths = []
        for k in range(files):
            path = folder / f"photo_{width}x{height}_{k}.jpg"
            Image.fromarray(synthetic_photo(width, height, k)).save(path, quality=90)
            paths.append(path)
        records = [LesionRecord(f"i{k}", paths[k % files], 0, f"g{k}", {}, None) for k in range(images)]
        table = LesionTable("bench", folder / "bench.csv", ["c"], records, [], [])
        for size in sizes:
            cache_size = CACHE_SIZE_FOR.get(size, size)
            sources = [("", records)]
            for image_format in CACHE_FORMATS:
                built = build_cache(table, cache_size, folder / f"cache{width}-{image_format}", image_format=image_format)
                sources.append((f"{image_format} {cache_size} cache ", apply_cache(table, built).records))
            for source, rows in sources:
                dataset = LesionDataset(rows, MetadataEncoder().fit(rows), build_transforms(True, size, "isic"),
                                        "bench", False, size)  # fmt: skip
                dataset[SampleKey(0, 0)]  # warm-up
                start = time.perf_counter()
                for i in range(len(dataset)):
                    dataset[SampleKey(i, i)]  # as training loads it: seeded per image
                rates[f"{source}{width}x{height}@{size}"] = len(dataset) / (time.perf_counter() - start)
    return rates


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
    parser.add_argument("--full-resolution", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the data path on generated full-size JPEGs")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. --data.batch_size=64")
    args, unknown = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cli = DermCLI(args=["--config", args.config, f"--run.dir={tmp}/a", "--run.wandb=false",
                            *args.overrides, *unknown])  # fmt: skip
        module, datamodule = cli.model, cli.datamodule
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        batch = next(iter(loader))
        train_rate, infer_rate = training_images_per_second(module, batch, args.steps)
        load_rate = images_per_second(loader, args.batches)
        # The experiment's own sampler: its keys carry each image's augmentation seed.
        single = DataLoader(datamodule.datasets["train"], batch_size=loader.batch_size, sampler=loader.sampler,
                            num_workers=0)  # fmt: skip
        single_rate = images_per_second(single, max(5, args.batches // 3))
        fixed = [b for _, b in zip(range(args.steps + 2), iter(single))]
        loop_cli = DermCLI(args=["--config", args.config, f"--run.dir={tmp}/b", "--run.wandb=false", "--run.test=false",
                                 "--trainer.max_epochs=1", "--trainer.limit_val_batches=0", "--early_stopping=null",
                                 "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
                                 "--trainer.enable_model_summary=false", *args.overrides, *unknown])  # fmt: skip
        fit_rate, bare_rate = loop_overhead(loop_cli, fixed)
        full_res = full_resolution_rates(Path(tmp)) if args.full_resolution else {}
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
        "fit_images_per_s": round(fit_rate, 1),
        "bare_loop_images_per_s": round(bare_rate, 1),
        "loop_overhead_ratio": round(fit_rate / bare_rate, 3),
        "full_resolution_images_per_s_per_worker": {k: round(v, 1) for k, v in full_res.items()},
    }
    print(f"\n== bench: {args.config} ({result['backbone']}, {hp.image_size}px, batch {hp.batch_size}, "
          f"{result['torch_threads']} torch threads) ==")
    print(f"training           {train_rate:8.1f} images/s  (forward + backward + step, fixed batch)")
    print(f"inference          {infer_rate:8.1f} images/s")
    print(f"data loading       {load_rate:8.1f} images/s  ({hp.num_workers} workers, decode + augment + collate)")
    print(f"data loading       {single_rate:8.1f} images/s  (single process)")
    print(f"data / training    {load_rate / train_rate:8.2f}x   (> 1: the pipeline keeps the model fed)")
    print(f"Trainer.fit        {fit_rate:8.1f} images/s  vs bare loop {bare_rate:.1f} on the same batches: "
          f"{fit_rate / bare_rate:.3f} (aim >= 0.90)")
    for key, rate in full_res.items():
        if " cache " in key:
            continue
        shape, size = key.split("@")
        caches = [(k.split(" cache ")[0], v) for k, v in full_res.items() if k.endswith(f" cache {key}")]
        print(f"full resolution    {rate:8.1f} images/s per worker  ({shape} JPEG q90 -> {size} px, isic augmentation)")
        for name, cached in caches:
            print(f"  from the {name} px cache {cached:8.1f} images/s per worker: {cached / rate:.1f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
