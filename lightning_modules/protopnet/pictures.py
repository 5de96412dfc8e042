"""Pictures and records of ProtoPNet prototypes: where on its source image a prototype comes from.

For a prototype projected onto cell (h, w) of a training image's latent map:

- the **receptive-field box**: every input pixel that cell sees (``receptive_field.cell_box``);
- the **activation box**: the bounding box of the pixels where the prototype's similarity map,
  upsampled to the image, reaches its 95th percentile (the paper's high-activation crop);
- three pictures: the patch (activation-box crop), the full image with both boxes (yellow:
  receptive field, cyan: activation), and the similarity heat map overlaid.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lightning_modules.protopnet.receptive_field import cell_box
from lightning_modules.utils.images import overlay

RF_COLOUR = (255, 215, 0)
ACTIVATION_COLOUR = (0, 255, 255)


def upsample_map(similarity: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) similarity map -> (H, W) float array, bicubic as in the paper."""
    return F.interpolate(similarity[None, None].float(), size=size, mode="bicubic", align_corners=False)[0, 0].cpu().numpy()


def activation_box(activation: np.ndarray, percentile: float = 95.0) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` (end-exclusive) around every pixel at or above the percentile."""
    ys, xs = np.nonzero(activation >= np.percentile(activation, percentile))
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def draw_box(picture: np.ndarray, box: tuple[int, int, int, int], colour) -> np.ndarray:
    y0, y1, x0, x1 = box
    out = picture.copy()
    cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, 1)
    return out


def prototype_pictures(image: np.ndarray, activation: np.ndarray, rf_box, act_box) -> dict[str, np.ndarray]:
    """``patch``, ``boxes`` and ``heatmap`` pictures (RGB uint8) of one prototype on its image."""
    y0, y1, x0, x1 = act_box
    span = activation.max() - activation.min()
    heat = (activation - activation.min()) / (span if span > 0 else 1.0)
    return {
        "patch": np.ascontiguousarray(image[y0:y1, x0:x1]),
        "boxes": draw_box(draw_box(image, rf_box, RF_COLOUR), act_box, ACTIVATION_COLOUR),
        "heatmap": overlay(image[None], heat[None])[0],
    }


def describe_push(result, net, records, class_names, image_size: int) -> list[dict[str, Any]]:
    """One entry per prototype after a push: its class and distance, and where it came from
    (source image, cell, receptive-field box in the ``image_size`` training picture)."""
    rf = net.receptive_field(image_size)
    classes = net.prototype_classes.tolist()
    out = []
    for j in range(len(classes)):
        i = int(result.image_index[j])
        entry: dict[str, Any] = {"prototype": j, "class": class_names[classes[j]], "distance": float(result.distance[j])}
        if i >= 0:
            h, w = int(result.h[j]), int(result.w[j])
            entry.update(image_index=i, image_id=records[i].image_id, image_path=str(records[i].original_path),
                         image_class=class_names[records[i].label], cell=[h, w],
                         receptive_field_box=list(cell_box(rf, h, w)))  # fmt: skip
        out.append(entry)
    return out


def bicubic_matrix(source: int, target: int) -> torch.Tensor:
    """(target, source) matrix ``R`` with ``R @ v`` = ``v`` bicubically resized to ``target`` along
    one axis, exactly the weights ``F.interpolate(mode="bicubic", align_corners=False)`` uses
    (bicubic resizing is separable, so a map resizes as ``R_h @ M @ R_w.T``)."""
    basis = torch.eye(source, dtype=torch.float64).view(source, 1, source, 1)
    return F.interpolate(basis, size=(target, 1), mode="bicubic", align_corners=False)[:, 0, :, 0].T.contiguous()


def percentile_rows(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """``np.percentile(values, percentile, axis=1)`` (linear method) of a float32 (n, k) tensor,
    bit for bit: the two order statistics around the virtual index from one ``topk``, then
    numpy's own two-sided lerp in float32."""
    k = values.shape[1]
    index = percentile / 100.0 * (k - 1)
    low = int(np.floor(index))
    gamma = torch.tensor(index - low, dtype=values.dtype)
    top = torch.topk(values, k - low, dim=1, sorted=False).values  # sorted[low:], as a multiset
    a = top.amin(dim=1)
    b = torch.topk(top, min(2, top.shape[1]), dim=1, largest=False).values[:, -1] if low + 1 < k else a
    diff = b - a
    return torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


@torch.no_grad()
def activation_boxes(entries: list[dict], activation: torch.Tensor, image_size: tuple[int, int],
                     percentile: float = 95.0, keep_maps: bool = True, chunk: int = 128) -> dict[int, np.ndarray]:
    """Add each sourced prototype's ``activation_box`` (the top-percentile box of its similarity
    map, ``activation[j]`` (H, W), upsampled to the source image) to its entry; return the
    upsampled maps by prototype, for pictures (``keep_maps=False``: none, which saves
    ``m x image`` floats when no pictures are drawn).

    The same boxes as ``activation_box(upsample_map(...))`` per prototype, vectorised over
    ``chunk`` prototypes: the bicubic upsample as two matrix products (``bicubic_matrix``), the
    percentile from ``topk`` (``percentile_rows``), the box from the rows and columns whose
    maximum reaches it. Per prototype, the upsample and the percentile's copy-and-partition of 50k pixels
    made the boxes of 2000 prototypes cost a sizeable part of a forward pass over the training set."""
    sourced = [entry for entry in entries if "image_index" in entry]
    maps: dict[int, np.ndarray] = {}
    if not sourced:
        return maps
    height, width = image_size
    activation = activation.detach().float()
    rows_matrix = bicubic_matrix(activation.shape[-2], height).float().to(activation.device)
    cols_matrix = bicubic_matrix(activation.shape[-1], width).float().to(activation.device)
    for start in range(0, len(sourced), chunk):
        part = sourced[start:start + chunk]
        ids = torch.tensor([entry["prototype"] for entry in part], device=activation.device)
        upsampled = rows_matrix @ activation[ids] @ cols_matrix.T  # (c, H, W)
        threshold = percentile_rows(upsampled.flatten(1), percentile)
        # Row i holds a pixel at or above the threshold iff its maximum does: no (c, H, W) mask.
        rows = upsampled.amax(dim=2) >= threshold[:, None]  # (c, H); every map has a True
        cols = upsampled.amax(dim=1) >= threshold[:, None]  # (c, W)
        y0, x0 = rows.int().argmax(dim=1), cols.int().argmax(dim=1)
        y1, x1 = height - rows.flip(1).int().argmax(dim=1), width - cols.flip(1).int().argmax(dim=1)
        boxes = torch.stack([y0, y1, x0, x1], dim=1).tolist()
        if keep_maps:
            arrays = upsampled.cpu().numpy()
        for k, entry in enumerate(part):
            entry["activation_box"] = boxes[k]
            if keep_maps:
                maps[entry["prototype"]] = arrays[k]
    return maps
