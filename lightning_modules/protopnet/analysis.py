"""Explaining ProtoPNet decisions: local analysis ("this looks like that") for one image, global
analysis (each prototype's nearest training patches), and pictures of the attack.

All of it reads the push record that ``PrototypePush`` keeps in checkpoints (source image and
boxes of every prototype), so a checkpoint is all that is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from datamodules.dataset import load_rgb  # noqa: E402
from lightning_modules.protopnet.pictures import (  # noqa: E402
    ACTIVATION_COLOUR,
    RF_COLOUR,
    activation_box,
    draw_box,
    upsample_map,
)
from lightning_modules.utils.images import overlay  # noqa: E402
from lightning_modules.utils.plots import figure_to_array  # noqa: E402


def push_record(checkpoint: dict) -> list[dict[str, Any]]:
    """The per-prototype record of the last push stored in a checkpoint."""
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith("PrototypePush") and state.get("records"):
            return state["records"]
    raise ValueError("this checkpoint has no prototype push record (was it trained with PrototypePush?)")


def source_picture(entry: dict, image_size: int) -> np.ndarray:
    """The prototype's source image at the training resolution (boxes are in those pixels)."""
    import cv2

    return cv2.resize(load_rgb(Path(entry["image_path"])), (image_size, image_size), interpolation=cv2.INTER_AREA)


@torch.no_grad()
def local_analysis(net, image: torch.Tensor, picture: np.ndarray, record: list[dict], class_names: list[str],
                   top_k: int = 3) -> tuple[list[dict], np.ndarray]:
    """The ``top_k`` most activated prototypes for one image (1, 3, H, W): similarity, the last
    layer's weight to the predicted class, their product (the contribution to its logit), and the
    figure: this image's patch | the prototype | the prototype's source image."""
    net.eval()
    output = net(image)
    similarity = net.distance_to_similarity(output.min_distances)[0]
    predicted = int(output.logits[0].argmax())
    weights = net.last_layer.weight[predicted]
    size = picture.shape[:2]
    rows = []
    for j in similarity.topk(min(top_k, similarity.numel())).indices.tolist():
        activation = upsample_map(net.distance_to_similarity(output.distances[0, j]), size)
        rows.append({
            "prototype": j,
            "prototype_class": record[j]["class"],
            "similarity": float(similarity[j]),
            "class_weight": float(weights[j]),
            "contribution": float(similarity[j] * weights[j]),
            "box": activation_box(activation),
            "activation": activation,
        })  # fmt: skip
    figure = _local_figure(picture, rows, record, class_names[predicted])
    return [{k: v for k, v in r.items() if k != "activation"} for r in rows], figure


def _local_figure(picture: np.ndarray, rows: list[dict], record: list[dict], predicted: str) -> np.ndarray:
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    size = picture.shape[0]
    for ax_row, row in zip(axes, rows):
        entry = record[row["prototype"]]
        ax_row[0].imshow(draw_box(picture, row["box"], ACTIVATION_COLOUR))
        ax_row[0].set_title(f"this image (-> {predicted})", fontsize=8)
        if "activation_box" in entry:
            source = source_picture(entry, size)
            y0, y1, x0, x1 = entry["activation_box"]
            ax_row[1].imshow(source[y0:y1, x0:x1])
            ax_row[2].imshow(draw_box(draw_box(source, entry["receptive_field_box"], RF_COLOUR),
                                      entry["activation_box"], ACTIVATION_COLOUR))  # fmt: skip
            ax_row[2].set_title(f"source: {entry['image_id']}", fontsize=7)
        ax_row[1].set_title(
            f"looks like p{row['prototype']} ({row['prototype_class']})\n"
            f"sim {row['similarity']:.2f} x w {row['class_weight']:.2f} = {row['contribution']:.2f}",
            fontsize=7,
        )
        for ax in ax_row:
            ax.axis("off")
    fig.tight_layout()
    return figure_to_array(fig)


@torch.no_grad()
def nearest_patches(net, loader, k: int = 5) -> dict[str, torch.Tensor]:
    """Global analysis: for every prototype, the ``k`` training images whose closest patch is
    nearest to it (one patch per image): ``distance``, ``image_index``, ``h``, ``w``, each (m, k)."""
    net.eval()
    distances, cells, indices = [], [], []
    for batch in loader:
        d = net(batch["image"]).distances  # (B, m, H, W)
        flat = d.flatten(2)
        best, where = flat.min(dim=2)
        distances.append(best)
        cells.append(where)
        indices.append(batch["index"])
    distances, cells, indices = torch.cat(distances), torch.cat(cells), torch.cat(indices)
    k = min(k, len(indices))
    top, rows = distances.topk(k, dim=0, largest=False)  # (k, m)
    width = d.shape[-1]
    chosen = cells.gather(0, rows)
    return {"distance": top.T, "image_index": indices[rows].T, "h": (chosen // width).T, "w": (chosen % width).T}


def attack_figure(picture: np.ndarray, attacked: np.ndarray, result, region: tuple[int, int, int, int]) -> np.ndarray:
    """Before | after (region boxed) | perturbation (amplified) | similarity map before | after."""
    size = picture.shape[:2]
    before = upsample_map(result.similarity_map_before, size)
    after = upsample_map(result.similarity_map_after, size)
    low, high = min(before.min(), after.min()), max(before.max(), after.max())
    scale = lambda m: (m - low) / max(high - low, 1e-12)  # noqa: E731 - one colour scale for both maps
    perturbation = result.perturbation[0].permute(1, 2, 0).cpu().numpy()
    amplified = (0.5 + perturbation / (2 * max(float(np.abs(perturbation).max()), 1e-12))).clip(0, 1)
    panels = [
        ("clean", picture),
        ("attacked", draw_box(attacked, region, ACTIVATION_COLOUR)),
        (f"perturbation (L-inf {result.linf * 255:.1f}/255)", (amplified * 255).astype(np.uint8)),
        (f"similarity before: {result.similarity_before:.2f}", overlay(picture[None], scale(before)[None])[0]),
        (f"after: {result.similarity_after:.2f}", overlay(attacked[None], scale(after)[None])[0]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (title, panel) in zip(axes, panels):
        ax.imshow(panel)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return figure_to_array(fig)


def region_mask(size: tuple[int, int], region: tuple[int, int, int, int]) -> torch.Tensor:
    """A boolean (H, W) mask of the box ``(y0, y1, x0, x1)``."""
    mask = torch.zeros(size, dtype=torch.bool)
    y0, y1, x0, x1 = region
    mask[y0:y1, x0:x1] = True
    return mask


@torch.no_grad()
def region_cells(net, image: torch.Tensor, region: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """The latent cells of ``net.latent(image)`` whose centres lie in a pixel box ``(y0, y1, x0, x1)``
    of ``image`` (at least the cell under the box's centre)."""
    h, w = net.latent(image).shape[-2:]
    height, width = image.shape[-2:]
    y0, y1, x0, x1 = region
    cells = [(r, c) for r in range(h) for c in range(w)
             if y0 <= (r + 0.5) * height / h < y1 and x0 <= (c + 0.5) * width / w < x1]  # fmt: skip
    return cells or [region_cell(net, image, region)]


@torch.no_grad()
def region_cell(net, image: torch.Tensor, region: tuple[int, int, int, int]) -> tuple[int, int]:
    """The latent cell under the centre of a pixel box ``(y0, y1, x0, x1)`` of ``image``."""
    h, w = net.latent(image).shape[-2:]
    height, width = image.shape[-2:]
    y0, y1, x0, x1 = region
    return min(h - 1, int((y0 + y1) / 2 * h / height)), min(w - 1, int((x0 + x1) / 2 * w / width))
