"""The one way every model exposes its attention maps, and how a map is scored.

A module that has attention implements ``attention_maps(image, meta) -> {name: (B, h, w)}``:
non-negative maps on whatever grid the model attends over (AttnVGG's two attention blocks,
the soft-attention grid, and later ABE-M's learner masks and ProtoPNet's prototype
activations). Callbacks and notebooks use only this, so they treat all models alike:

    maps = module.attention_maps(batch["image"], batch["meta"])      # where a map is made
    heat = upsample(maps["attn1"], image.shape[-2:])                 # -> image grid
    score = lesion_mass(heat, batch["mask"])                         # does it look at the lesion?
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torchmetrics import Metric


@runtime_checkable
class ExposesAttention(Protocol):
    def attention_maps(self, image: torch.Tensor, meta: torch.Tensor) -> dict[str, torch.Tensor]: ...


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps bilinearly resized to ``size`` (the attention grid drawn over the image)."""
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] (for display: colour maps need a common range)."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


def lesion_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's attention mass that falls inside the lesion (energy-based pointing
    game): ``sum(a * mask) / sum(a)`` per image, after resizing the map to the mask. 1 means all
    attention on the lesion; a uniform map scores the lesion's share of the image, and so does a
    map with no mass at all (e.g. a Grad-CAM whose every cell the ReLU zeroed): it points nowhere,
    which is no better than everywhere, rather than a score of 0."""
    if maps.shape[-2:] != masks.shape[-2:]:
        maps = upsample(maps, masks.shape[-2:])
    maps = maps.clamp_min(0).float()
    lesion = (masks > 0.5).float()
    total = maps.flatten(1).sum(1)
    inside = (maps * lesion).flatten(1).sum(1)
    empty = total <= 1e-12
    return torch.where(empty, lesion.flatten(1).mean(1), inside / total.clamp_min(1e-12))


class LesionMass(Metric):
    """Mean :func:`lesion_mass` over the images seen (synced across processes)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, maps: torch.Tensor, masks: torch.Tensor) -> None:
        scores = lesion_mass(maps, masks)
        self.total += scores.double().sum()
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()
