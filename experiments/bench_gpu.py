"""Training images/s of every architecture on a GPU at 224 px, per precision and GPU option.

    python -m experiments.bench_gpu [--image-size 224] [--batch-size 64] [--steps 30] \
        [--configs metablock attn_vgg ...] [--device cuda|cpu] [--no-push]

Each row is a real ``Trainer.fit`` of the experiment's own config (its module, metrics,
callbacks and loggers) over fixed batches of the experiment's own data at ``--image-size``
(so the data pipeline is not what is timed), with one setting changed:
``--trainer.precision`` (``32-true``, ``16-mixed``, ``bf16-mixed``),
``--model.init_args.channels_last=true`` and ``--model.init_args.compile=true``. The first
``--warmup`` batches (compilation, cudnn autotuning) and the epoch's last batch are not timed;
ProtoPNet runs without its push callback; the push is timed after the training rows instead, by
``bench_push`` on the same device (``--push-backbone``, ``--push-images``, ``--push-classes`` x 10
prototypes, at ``--image-size`` and ``--batch-size``), in one line: images/s and the milliseconds
after the forward pass, ours against the stand-in for the reference's per-batch work. DataLoader
settings follow the accelerator by themselves (``pin_memory`` when CUDA is present,
``persistent_workers`` with workers).

Without a GPU it prints one line saying so and exits 0 (``make bench`` calls it). ``--device cpu``
runs the same measurement on the CPU (32-true and bf16-mixed, no compile), for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from experiments import bench_push  # noqa: E402
from experiments import registry  # noqa: E402
from experiments.bench import FixedBatches  # noqa: E402
from experiments.cli import DermCLI  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = tuple(registry.experiments())  # every experiment as configured (experiments/registry.yaml)
GPU_VARIANTS = {
    "fp32": ["--trainer.precision=32-true"],
    "16-mixed": ["--trainer.precision=16-mixed"],
    "bf16-mixed": ["--trainer.precision=bf16-mixed"],
    "bf16 + channels_last": ["--trainer.precision=bf16-mixed", "--model.init_args.channels_last=true"],
    "bf16 + channels_last + compile": ["--trainer.precision=bf16-mixed", "--model.init_args.channels_last=true",
                                       "--model.init_args.compile=true"],
}
CPU_VARIANTS = {k: GPU_VARIANTS[k] for k in ("fp32", "bf16-mixed")}
# The push needs the datamodule's images and is timed by ``bench_push``; not here.
NO_PUSH = {"protopnet": ["--model.init_args.push_start=1000000", "--model.init_args.push_at_end=false"]}


class BatchTimer(L.Callback):
    """Images/s between the start of batch ``warmup`` and the start of the epoch's last batch
    (whose end is where epoch-end work such as ProtoPNet's push begins)."""

    def __init__(self, warmup: int):
        self.warmup, self.images, self.start, self.end = warmup, 0, None, None

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        last = batch_idx == trainer.num_training_batches - 1
        if batch_idx == self.warmup:
            self.start = self._now(pl_module)
        if last and self.start is not None:
            self.end = self._now(pl_module)
        elif batch_idx >= self.warmup:
            self.images += batch["image"].shape[0]

    @property
    def rate(self) -> float:
        if self.start is None or self.end is None or self.end <= self.start:
            return float("nan")
        return self.images / (self.end - self.start)


def common_args(config: str, run_dir: str, args) -> list[str]:
    return ["--config", str(REPO / "experiments" / f"{config}.yaml"), f"--run.dir={run_dir}", "--run.wandb=false",
            "--run.test=false", "--trainer.max_epochs=1", "--trainer.limit_val_batches=0", "--early_stopping=null",
            "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.accelerator={args.device}", "--trainer.devices=1",
            f"--data.image_size={args.image_size}", f"--data.batch_size={args.batch_size}"]  # fmt: skip


def fixed_batches(config: str, run_dir: str, args) -> list[dict]:
    """``--steps`` training batches of the experiment's own data (its sampler, P x K for ABE-M),
    repeated as needed, collated once on the CPU."""
    cli = DermCLI(args=common_args(config, run_dir, args))
    cli.datamodule.setup("fit")
    batches = []
    while len(batches) < args.steps:
        for batch in cli.datamodule.train_dataloader():
            batches.append(batch)
            if len(batches) == args.steps:
                break
    return batches


def measure(config: str, variant: list[str], batches: list[dict], run_dir: str, args) -> float:
    cli = DermCLI(args=[*common_args(config, run_dir, args), *NO_PUSH.get(config, []), *variant])
    timer = BatchTimer(args.warmup)
    cli.trainer.callbacks = [*cli.trainer.callbacks, timer]
    cli.trainer.fit(cli.model, train_dataloaders=DataLoader(FixedBatches(batches), batch_size=None, shuffle=False))
    return timer.rate


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="batches per measurement (warm-up and last included)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--push", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the ProtoPNet push on the device (bench_push)")
    parser.add_argument("--push-backbone", default="resnet18")
    parser.add_argument("--push-images", type=int, default=192)
    parser.add_argument("--push-classes", type=int, default=200, help="x 10 prototypes per class")
    args = parser.parse_args(argv)
    if args.steps < args.warmup + 2:
        parser.error("--steps must leave at least one timed batch after --warmup and before the last")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("\n== GPU bench: no CUDA device here; skipped (python -m experiments.bench_gpu on a GPU machine) ==")
        return []
    variants = GPU_VARIANTS if args.device == "cuda" else CPU_VARIANTS
    if args.device == "cuda" and not torch.cuda.is_bf16_supported():
        variants = {k: v for k, v in variants.items() if "bf16" not in k}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            batches = fixed_batches(config, f"{tmp}/{config}-data", args)
            for name, variant in variants.items():
                rate = measure(config, variant, batches, f"{tmp}/{config}-{len(rows)}", args)
                rows.append({"config": config, "variant": name, "images_per_s": round(rate, 1)})
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"\n== GPU bench: {device}, {args.image_size}px, batch {args.batch_size}, Trainer.fit on fixed batches ==")
    for config in args.configs:
        own = [r for r in rows if r["config"] == config]
        base = own[0]["images_per_s"]
        cells = ", ".join(f"{r['variant']} {r['images_per_s']:.0f} ({r['images_per_s'] / base:.2f}x)" for r in own)
        print(f"{config:15s} images/s: {cells}")
    if args.push:
        rows.append(push_row(args))
    print(json.dumps(rows))
    return rows


def push_row(args) -> dict:
    """The ProtoPNet push on the device (``bench_push.measure``), printed as one line."""
    options = SimpleNamespace(device=args.device, backbone=args.push_backbone, images=args.push_images,
                              image_size=args.image_size, batch_size=args.batch_size, prototypes_per_class=10,
                              prototype_dim=128, repeats=2, pictures=False)  # fmt: skip
    r = bench_push.measure(args.push_classes, options)
    print(f"push ({args.push_backbone}, {r['prototypes']} prototypes, {r['images']} images at {args.image_size}px, "
          f"fp32): ours {r['push_images_per_s']:.1f} images/s, {r['after_forward_ms']:.0f} ms after the forward; "
          f"stand-in for the reference {r['reference_push_images_per_s']:.1f} images/s, "
          f"{r['reference_after_forward_ms']:.0f} ms after the forward ({r['after_forward_speedup']:.1f}x); "
          f"bare forward {r['forward_images_per_s']:.1f} images/s; same prototypes: "
          f"{'yes' if r['same_prototypes_as_reference'] else 'NO'}")
    return {"config": "protopnet push", "variant": "fp32", "images_per_s": r["push_images_per_s"], **r}


if __name__ == "__main__":
    main()
