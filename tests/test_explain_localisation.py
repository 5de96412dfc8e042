"""Localisation scores: hand-computed cases (a map equal to the mask, its inverse, a uniform map)
and Quantus' implementations on maps without ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from lightning_modules.explain.baselines import centre_map, uniform_map
from lightning_modules.explain.localisation import (
    dilate,
    pointing_game,
    pointing_tolerance,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)


def square_mask(size: int = 8, top: int = 3, side: int = 2) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[:, top:top + side, top:top + side] = 1
    return mask


def test_a_map_equal_to_the_mask_scores_one_and_its_inverse_zero():
    mask = square_mask()
    for score in (relevance_mass_accuracy, relevance_rank_accuracy):
        assert score(mask, mask).item() == 1.0
        assert score(1 - mask, mask).item() == 0.0
    assert pointing_game(mask, mask, tolerance=0).item() == 1.0
    assert pointing_game(1 - mask, mask, tolerance=0).item() == 0.0


def test_pointing_game_tolerance_by_hand():
    """The inverse of a 2x2 lesion in an 8x8 image peaks on all 60 pixels outside it; within 1 px
    (Euclidean) of the lesion lie the 8 edge neighbours (diagonals are sqrt(2) away): 8/60 of
    the peak hits. Within 1.5 px the 4 diagonal corners join: 12/60."""
    mask = square_mask()
    assert pointing_game(1 - mask, mask, tolerance=1.0).item() == pytest.approx(8 / 60)
    assert pointing_game(1 - mask, mask, tolerance=1.5).item() == pytest.approx(12 / 60)


def test_uniform_map_scores_what_guessing_would():
    mask = square_mask()  # 4 of 64 pixels
    uniform = uniform_map(1, (8, 8))
    assert relevance_mass_accuracy(uniform, mask).item() == pytest.approx(4 / 64)
    assert relevance_rank_accuracy(uniform, mask).item() == pytest.approx(4 / 64)
    assert pointing_game(uniform, mask, tolerance=0).item() == pytest.approx(4 / 64)
    assert pointing_game(uniform, mask, tolerance=1.0).item() == pytest.approx(12 / 64)


def test_a_grid_map_is_resized_to_the_mask():
    """A 2x2 map whose top-left cell is hot, on a 16x16 mask of the top-left quadrant."""
    mask = torch.zeros(1, 16, 16)
    mask[:, :8, :8] = 1
    grid = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert pointing_game(grid, mask, tolerance=0).item() == 1.0
    assert relevance_mass_accuracy(grid, mask).item() > 0.5
    assert relevance_rank_accuracy(grid, mask).item() > 0.5


def test_rank_accuracy_counts_ties_at_the_boundary_in_proportion():
    """K = 2 lesion pixels; the map ranks one lesion pixel first, then ties the other lesion pixel
    with two background pixels: 1 place for 3 tied pixels, one of them in the lesion."""
    mask = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    maps = torch.tensor([[[2.0, 1.0, 1.0, 1.0]]])
    assert relevance_rank_accuracy(maps, mask).item() == pytest.approx((1 + 1 / 3) / 2)


def test_empty_mask_scores_nan():
    empty = torch.zeros(1, 8, 8)
    maps = torch.rand(1, 8, 8)
    for score in (relevance_mass_accuracy, relevance_rank_accuracy, pointing_game):
        assert math.isnan(score(maps, empty).item())


def test_pointing_tolerance_is_15_px_at_224():
    assert pointing_tolerance(224) == 15
    assert pointing_tolerance(64) == pytest.approx(15 * 64 / 224)


def test_dilation_equals_the_euclidean_distance_transform():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 20, 24, generator=generator) > 0.97
    for radius in (1.0, 2.5, 4.29):
        expected = np.stack([distance_transform_edt(~m.numpy()) <= radius for m in masks])
        assert np.array_equal(dilate(masks, radius).numpy(), expected)


def test_centre_prior_peaks_in_the_middle():
    prior = centre_map(2, (5, 5))
    assert prior.shape == (2, 5, 5) and prior[0].argmax().item() == 12
    assert torch.allclose(prior[0], prior[0].T) and torch.allclose(prior[0], prior[0].flip(0))


@pytest.fixture(scope="module")
def untied():
    """Maps without ties (continuous random values) and random lesion masks, at one resolution."""
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(6, 16, 16, generator=generator)
    masks = (torch.rand(6, 16, 16, generator=generator) > 0.7).float()
    return maps, masks


def _quantus(metric, maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    x = np.zeros((len(maps), 1, *maps.shape[-2:]), dtype=np.float32)
    scores = metric(model=None, x_batch=x, y_batch=np.zeros(len(maps), dtype=int), a_batch=maps[:, None].numpy(),
                    s_batch=masks[:, None].numpy(), device="cpu")  # fmt: skip
    return np.asarray(scores, dtype=float)


def test_agrees_with_quantus(untied):
    quantus = pytest.importorskip("quantus")
    maps, masks = untied
    options = {"abs": False, "normalise": False, "disable_warnings": True}
    assert np.allclose(relevance_mass_accuracy(maps, masks).numpy(),
                       _quantus(quantus.RelevanceMassAccuracy(**options), maps, masks), atol=1e-6)  # fmt: skip
    assert np.allclose(relevance_rank_accuracy(maps, masks).numpy(),
                       _quantus(quantus.RelevanceRankAccuracy(**options), maps, masks), atol=1e-6)  # fmt: skip
    assert np.array_equal(pointing_game(maps, masks, tolerance=0).numpy(),
                          _quantus(quantus.PointingGame(**options), maps, masks))  # fmt: skip
