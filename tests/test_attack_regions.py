"""A pixel box of the image as the latent cells an attack targets (``protopnet.analysis``)."""

from __future__ import annotations

import torch

from lightning_modules.protopnet.analysis import region_cell, region_cells

IMAGE = torch.zeros(1, 3, 48, 48)


class Grid:
    """A stand-in network whose latent map is an ``h x w`` grid over the image."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w

    def latent(self, image: torch.Tensor) -> torch.Tensor:
        return torch.zeros(image.shape[0], 2, self.h, self.w)


def test_the_cells_whose_centres_lie_in_the_box():
    grid = Grid(3, 3)  # cells of 16 px, centres at 8, 24 and 40
    assert region_cells(grid, IMAGE, (0, 16, 0, 16)) == [(0, 0)]
    assert region_cells(grid, IMAGE, (0, 32, 16, 48)) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert region_cells(grid, IMAGE, (8, 9, 0, 48)) == [(0, 0), (0, 1), (0, 2)]  # y0 inclusive
    assert region_cells(Grid(2, 4), IMAGE, (0, 24, 0, 48)) == [(0, 0), (0, 1), (0, 2), (0, 3)]


def test_a_box_without_a_cell_centre_takes_the_cell_under_its_centre():
    grid = Grid(3, 3)
    assert region_cells(grid, IMAGE, (0, 8, 0, 48)) == [(0, 1)]  # y1 exclusive: no centre; (4, 24) -> (0, 1)
    assert region_cells(grid, IMAGE, (20, 22, 20, 22)) == [(1, 1)]  # 21 * 3 / 48 = 1.3
    assert region_cell(grid, IMAGE, (44, 48, 0, 4)) == (2, 0)  # 46 * 3 / 48 = 2.9
    assert region_cell(grid, IMAGE, (48, 48, 48, 48)) == (2, 2)  # the image's far edge: the last cell
    assert region_cell(Grid(2, 4), IMAGE, (0, 48, 0, 48)) == (1, 2)
