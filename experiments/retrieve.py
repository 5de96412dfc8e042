"""Retrieval demo: the k training lesions most similar to an image, by an embedding model (ABE-M).

    python -m experiments.retrieve --ckpt runs/abe/<run>/checkpoints/best-epochNNN.ckpt \
        --image path/to/lesion.png [--k 5] [--out neighbours.png]

Prints the neighbours (image id, class, distance) and renders query | neighbours as one PNG
(it prints where).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from datamodules.checkpoint_data import build_datamodule  # noqa: E402
from datamodules.dataset import load_rgb  # noqa: E402
from lightning_modules.contracts import EmbeddingNet  # noqa: E402
from lightning_modules.modules.loading import load_module, read_checkpoint  # noqa: E402
from lightning_modules.utils.atomic_io import write_png  # noqa: E402
from lightning_modules.utils.plots import figure_to_array  # noqa: E402


@torch.no_grad()
def embed_training_images(module, datamodule) -> torch.Tensor:
    return torch.cat([module(b["image"], b["meta"]) for b in datamodule.eval_dataloader("train")])


@torch.no_grad()
def retrieve(ckpt: str, image: str, k: int = 5, out: Optional[str] = None) -> list[dict]:
    if k < 1:
        raise ValueError(f"--k {k}: the number of neighbours must be at least 1")
    checkpoint = read_checkpoint(ckpt)
    module = load_module(ckpt)
    if not isinstance(module.net, EmbeddingNet):
        raise ValueError(f"{ckpt}: {type(module.net).__name__} does not embed images; retrieval needs an "
                         "embedding model (experiments/abe.yaml)")
    datamodule = build_datamodule(checkpoint, None, None, "train", num_workers=0)
    query_pixels = load_rgb(Path(image))
    query = module(datamodule.eval_transform()(image=query_pixels)["image"][None], torch.zeros(1, datamodule.meta_dim))
    bank = embed_training_images(module, datamodule)
    distances, order = torch.cdist(query, bank)[0].topk(min(k, len(bank)), largest=False)
    records = datamodule.records("train")
    neighbours = [{"image_id": records[i].image_id, "class": datamodule.class_names[records[i].label],
                   "distance": float(d), "path": str(records[i].original_path)}
                  for d, i in zip(distances.tolist(), order.tolist())]  # fmt: skip
    out_path = Path(out) if out else Path(ckpt).resolve().parent.parent / f"retrieval_{Path(image).stem}.png"
    render(query_pixels, neighbours, out_path)
    print(f"figure: {out_path}", file=sys.stderr)
    return neighbours


def render(query: np.ndarray, neighbours: list[dict], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(neighbours) + 1, figsize=(2.2 * (len(neighbours) + 1), 2.6))
    axes[0].imshow(query)
    axes[0].set_title("query", fontsize=9)
    for ax, n in zip(axes[1:], neighbours):
        ax.imshow(load_rgb(Path(n["path"])))
        ax.set_title(f"{n['class']}  d={n['distance']:.2f}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    write_png(path, figure_to_array(fig))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--image", required=True, help="an image file (any size; RGB/RGBA/grayscale)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--out", default=None, help="default: <run>/retrieval_<image>.png")
    args = parser.parse_args(argv)
    for n in retrieve(args.ckpt, args.image, args.k, args.out):
        print(f"{n['image_id']:24s} {n['class']:8s} {n['distance']:.3f}")


if __name__ == "__main__":
    from datamodules.entry_point import run

    run(main)
