"""How easily can a ProtoPNet explanation be faked? The "this does not look like that" attack
(Hoffmann et al. 2021, ``protopnet.attack.paper_attack``) over a set of images.

For each image: the top prototype (the most activated one on the clean image) and its clean top
cell; the attacked region is the grid cell farthest from that top cell (Euclidean distance
between cell centres; the first in row-major order on ties), as a pixel box of one cell's size,
where a patch the prototype did not see is made to look like it. The paper's attack perturbs the
pixels in that box only (L-inf budget ``epsilon`` in [0, 1] pixel units, PGD with its steps). It
succeeds when the region's similarity to the prototype (the mean over the region's cells) rises
above the clean image's top activation of that prototype: the region would then be shown as the
best match, "this looks like that", where nothing on the clean image did. The change in the
probability of the clean prediction's class says how much the classification moved with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from lightning_modules.protopnet.analysis import region_mask
from lightning_modules.protopnet.attack import paper_attack


@dataclass
class AttackOutcome:
    success: bool
    similarity_clean_top: float  # the prototype's top activation on the clean image
    similarity_region_before: float  # the region's mean similarity, clean
    similarity_region_after: float  # ... and attacked
    probability_before: float  # of the class predicted on the clean image
    probability_after: float
    region: tuple[int, int, int, int]  # (y0, y1, x0, x1) pixels


def farthest_cell(top: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """The grid cell farthest from ``top`` (first in row-major order on ties)."""
    cells = [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    return max(cells, key=lambda cell: ((cell[0] - top[0]) ** 2 + (cell[1] - top[1]) ** 2, -cells.index(cell)))


def cell_box(cell: tuple[int, int], grid: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixel box ``(y0, y1, x0, x1)`` a grid cell covers."""
    (r, c), (h, w), (height, width) = cell, grid, size
    return (r * height // h, (r + 1) * height // h, c * width // w, (c + 1) * width // w)


def attack_image(net: nn.Module, image: torch.Tensor, meta: torch.Tensor, epsilon: float, steps: int,
                 step_size: float, mean: Sequence[float], std: Sequence[float], seed: int = 0) -> AttackOutcome:
    """The attack on one image ``(1, 3, H, W)`` (normalised with ``mean``/``std``)."""
    with torch.no_grad():
        output = net(image, meta)
        predicted = int(output.logits.argmax(dim=1))
        probability_before = float(output.logits.softmax(dim=1)[0, predicted])
        similarity = net.distance_to_similarity(output.distances)[0]  # (m, h, w)
        prototype = int(net.distance_to_similarity(output.min_distances)[0].argmax())
        grid = tuple(similarity.shape[-2:])
        flat = int(similarity[prototype].flatten().argmax())
        top = divmod(flat, grid[1])
    target = farthest_cell(top, grid)
    region = cell_box(target, grid, tuple(image.shape[-2:]))
    result = paper_attack(net, image, prototype, region_mask(tuple(image.shape[-2:]), region), [target],
                          epsilon=epsilon, steps=steps, step_size=step_size, seed=seed, mean=mean, std=std)
    with torch.no_grad():
        probability_after = float(net(result.image, meta).logits.softmax(dim=1)[0, predicted])
    clean_top = float(similarity[prototype].max())
    return AttackOutcome(success=result.similarity_after > clean_top, similarity_clean_top=clean_top,
                         similarity_region_before=result.similarity_before,
                         similarity_region_after=result.similarity_after, probability_before=probability_before,
                         probability_after=probability_after, region=region)  # fmt: skip
