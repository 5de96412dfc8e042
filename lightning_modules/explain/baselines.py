"""Maps that know nothing about the image, as the bars a method has to clear.

- ``uniform``: the same relevance everywhere. Its lesion mass and rank accuracy are the lesion's
  share of the image; its pointing game the share of the image within tolerance of the lesion.
- ``centre``: a centred Gaussian (sigma a quarter of the side), the prior "look at the middle":
  lesions are usually photographed in the centre, so a map has to beat this to show it found the
  lesion rather than the middle of the picture.
- ``random``: independent uniform values per cell, a new draw per image (seeded): the order of a
  random map is the faithfulness baseline of deletion, insertion and ROAD.

All on the grid of the network's post-hoc maps, resized to the image the same way as they are.
"""

from __future__ import annotations

import torch

#: The centre prior's standard deviation, as a fraction of the image side.
CENTRE_SIGMA = 0.25


def uniform_map(batch: int, grid: tuple[int, int]) -> torch.Tensor:
    return torch.ones(batch, *grid)


def centre_map(batch: int, grid: tuple[int, int], sigma: float = CENTRE_SIGMA) -> torch.Tensor:
    """A Gaussian centred on the image, evaluated at the cell centres (coordinates in [0, 1])."""
    ys = (torch.arange(grid[0]) + 0.5) / grid[0] - 0.5
    xs = (torch.arange(grid[1]) + 0.5) / grid[1] - 0.5
    squared = ys[:, None] ** 2 + xs[None, :] ** 2
    return torch.exp(-squared / (2 * sigma**2)).expand(batch, *grid).clone()


def random_map(batch: int, grid: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    return torch.rand(batch, *grid, generator=generator)
