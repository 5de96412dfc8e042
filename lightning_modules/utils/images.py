"""Picture helpers shared by callbacks, analysis and notebooks: maps to the image grid, colour
overlays, de-normalisation, grids. Plain functions on tensors / uint8 arrays, no Lightning."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps bilinearly resized to ``size`` (the attention grid drawn over the image)."""
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] (for display: colour maps need a common range)."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


def overlay(images: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """RGB uint8 images (B, H, W, 3) with [0, 1] heat maps (B, H, W) blended on top."""
    colours = colormaps[cmap](heat)[..., :3]
    return (255 * ((1 - alpha) * images / 255.0 + alpha * colours)).clip(0, 255).astype(np.uint8)


def denormalise(images: torch.Tensor, mean, std) -> np.ndarray:
    """(B, 3, H, W) normalised tensors -> (B, H, W, 3) uint8 pictures."""
    mean = torch.tensor(mean, device=images.device)[:, None, None]
    std = torch.tensor(std, device=images.device)[:, None, None]
    pixels = (images * std + mean).clamp(0, 1) * 255
    return pixels.permute(0, 2, 3, 1).round().byte().cpu().numpy()


def grid(pictures: list[np.ndarray], columns: int) -> np.ndarray:
    """Pictures of one size tiled row by row on white, 2 px apart."""
    h, w = pictures[0].shape[:2]
    rows = (len(pictures) + columns - 1) // columns
    out = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
    for k, picture in enumerate(pictures):
        r, c = divmod(k, columns)
        out[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = picture
    return out


def mask_edges(masks: np.ndarray) -> np.ndarray:
    """(B, H, W) boolean edge of each binary mask: mask pixels with a 4-neighbour outside it (the
    image border counts as outside, so a lesion touching it is closed there too)."""
    inside = np.pad(np.asarray(masks) > 0.5, ((0, 0), (1, 1), (1, 1)))
    core = inside[:, 1:-1, 1:-1]
    all_neighbours_inside = inside[:, :-2, 1:-1] & inside[:, 2:, 1:-1] & inside[:, 1:-1, :-2] & inside[:, 1:-1, 2:]
    return core & ~all_neighbours_inside


def outline(pictures: np.ndarray, masks: np.ndarray, colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """RGB uint8 pictures (B, H, W, 3) with the lesion masks' (B, H, W) outlines drawn on: where the
    map's energy lies relative to the lesion, readable on any colour map."""
    out = np.array(pictures, copy=True)
    out[mask_edges(masks)] = colour
    return out
