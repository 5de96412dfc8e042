"""How easily can a ProtoPNet explanation be faked? The "this does not look like that" attack
(Hoffmann et al. 2021, ``protopnet.attack.paper_attack``) over a set of images, attacked together.

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
from lightning_modules.protopnet.attack import paper_attack_batch


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
    return attack_images(net, image, meta, epsilon, steps, step_size, mean, std, seed)[0]


def attack_images(net: nn.Module, image: torch.Tensor, meta: torch.Tensor, epsilon: float, steps: int,
                  step_size: float, mean: Sequence[float], std: Sequence[float], seed: int = 0) -> list[AttackOutcome]:
    """The attack on each of the images ``(B, 3, H, W)``, all attacked together
    (:func:`~lightning_modules.protopnet.attack.paper_attack_batch`: one pass per PGD step for the
    batch; each image's outcome is its own attack's)."""
    with torch.no_grad():
        output = net(image, meta)
        probabilities = output.logits.softmax(dim=1)
        predicted = output.logits.argmax(dim=1)
        similarity = net.distance_to_similarity(output.distances)  # (B, m, h, w)
        prototypes = net.distance_to_similarity(output.min_distances).argmax(dim=1).tolist()
    grid, size = tuple(similarity.shape[-2:]), tuple(image.shape[-2:])
    tops = [divmod(int(similarity[i, p].flatten().argmax()), grid[1]) for i, p in enumerate(prototypes)]
    targets = [farthest_cell(top, grid) for top in tops]
    regions = [cell_box(target, grid, size) for target in targets]
    masks = torch.stack([region_mask(size, region) for region in regions])
    results = paper_attack_batch(net, image, prototypes, masks, [[target] for target in targets], epsilon=epsilon,
                                 steps=steps, step_size=step_size, seed=seed, mean=mean, std=std)  # fmt: skip
    with torch.no_grad():
        after = net(torch.cat([r.image for r in results]), meta).logits.softmax(dim=1)
    outcomes = []
    for i, (result, p) in enumerate(zip(results, prototypes)):
        clean_top = float(similarity[i, p].max())
        c = int(predicted[i])
        outcomes.append(AttackOutcome(success=result.similarity_after > clean_top, similarity_clean_top=clean_top,
                                      similarity_region_before=result.similarity_before,
                                      similarity_region_after=result.similarity_after,
                                      probability_before=float(probabilities[i, c]),
                                      probability_after=float(after[i, c]), region=regions[i]))  # fmt: skip
    return outcomes
