"""Does an attention map look at the lesion? The share of its mass inside the lesion mask.

    maps = net.forward_with_attention(image, meta)[1]            # where a map is made
    score = lesion_mass(maps["attn1"], batch["mask"])           # resized to the mask inside
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from lightning_modules.utils.images import upsample


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
