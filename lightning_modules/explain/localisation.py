"""Does a map point at the lesion? Three scores against the lesion mask, per image.

- **relevance mass accuracy** (Arras et al. 2022) = the project's lesion mass
  (:func:`~lightning_modules.metrics.lesion_mass.lesion_mass`): the share of the map's mass inside
  the mask.
- **relevance rank accuracy** (Arras et al. 2022): of the ``K = |mask|`` highest-ranked pixels,
  the share inside the mask.
- **pointing game** (Zhang et al. 2016): a hit when the map's maximum lies inside the mask or
  within a tolerance of it: 15 px at 224 px in the original, scaled with the image (15 S / 224 px
  at side S).

Maps on a grid are first resized to the mask bilinearly (``utils.images.upsample``), as for
lesion mass. Ties are scored by their expectation under a random tie-break, not by the pixel
order: a maximum shared by several pixels scores the share of them that hit, and pixels tied at
the rank-``K`` boundary count in proportion to the places left. So a uniform map scores what
guessing would (the lesion's share of the image, or of the image within tolerance), where
Quantus' ``PointingGame`` counts a hit if *any* maximal pixel hits (a uniform map always scores
1) and its ``RelevanceRankAccuracy`` takes tied pixels in ``argsort`` order. Without ties, the
three equal Quantus' (checked in ``tests/test_explain_localisation.py``). Images with an empty
mask score NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_modules.metrics.lesion_mass import lesion_mass
from lightning_modules.utils.images import upsample

#: The pointing game's tolerance in the original (Zhang et al. 2016): 15 px at 224 px.
POINTING_TOLERANCE_PX, POINTING_REFERENCE_SIZE = 15, 224


def pointing_tolerance(size: int) -> float:
    """The tolerance in pixels for images of side ``size``: 15 px at 224 px, scaled."""
    return POINTING_TOLERANCE_PX * size / POINTING_REFERENCE_SIZE


def _on_mask(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if maps.shape[-2:] != masks.shape[-2:]:
        maps = upsample(maps, masks.shape[-2:])
    return maps.float(), masks > 0.5


def _empty_to_nan(scores: torch.Tensor, lesion: torch.Tensor) -> torch.Tensor:
    return torch.where(lesion.flatten(1).any(dim=1), scores, torch.full_like(scores, math.nan))


def dilate(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """Boolean masks grown by every pixel within Euclidean distance ``radius`` of them."""
    r = int(math.floor(radius))
    if r < 1:
        return masks.bool()
    offsets = torch.arange(-r, r + 1, dtype=torch.float32)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()[None, None]
    grown = F.conv2d(masks.float()[:, None], disk, padding=r)[:, 0]
    return grown > 0.5


def relevance_mass_accuracy(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The lesion mass (``lesion_mass``): negative values count as 0, and a map with no mass at
    all scores the lesion's share of the image (it points nowhere, which is no better than
    everywhere)."""
    return _empty_to_nan(lesion_mass(maps, masks), masks > 0.5)


def relevance_rank_accuracy(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the ``K = |mask|`` top-ranked pixels inside the mask (ties: expected share)."""
    maps, lesion = _on_mask(maps, masks)
    values, inside = maps.flatten(1), lesion.flatten(1).float()
    k = inside.sum(dim=1)
    ordered = values.sort(dim=1, descending=True).values
    threshold = ordered.gather(1, (k.long() - 1).clamp_min(0)[:, None])  # the K-th largest value
    above, tied = values > threshold, values == threshold
    places = k - above.sum(dim=1)  # taken by the tied pixels, in proportion
    share = places / tied.sum(dim=1).clamp_min(1)
    hits = (above.float() * inside).sum(dim=1) + share * (tied.float() * inside).sum(dim=1)
    return _empty_to_nan(hits / k.clamp_min(1), lesion)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: float | None = None) -> torch.Tensor:
    """1 when the map's maximum lies within ``tolerance`` pixels of the mask (default
    :func:`pointing_tolerance` of the mask's side), else 0; a maximum shared by several pixels
    scores the share of them that hit."""
    maps, lesion = _on_mask(maps, masks)
    if tolerance is None:
        tolerance = pointing_tolerance(max(masks.shape[-2:]))
    target = dilate(lesion, tolerance).flatten(1)
    values = maps.flatten(1)
    peaks = values == values.max(dim=1, keepdim=True).values
    hits = (peaks & target).sum(dim=1) / peaks.sum(dim=1)
    return _empty_to_nan(hits.float(), lesion)


LOCALISATION = {"lesion_mass": relevance_mass_accuracy, "pointing_game": pointing_game,
                "rank_accuracy": relevance_rank_accuracy}  # fmt: skip
