"""Faithfulness: deletion / insertion curves and ROAD on a model built to look only at the lesion,
by hand and against random orders (and ROAD against Quantus')."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_modules.explain.baselines import random_map
from lightning_modules.explain.deletion import area, blurred, curves, end_points, relevance_ranks
from lightning_modules.explain.road import road
from lightning_modules.explain.target import ClassScores


class LesionOnly(nn.Module):
    """Two classes; class 1's logit is 4 x (mean of the image over a fixed lesion) - 2, so the
    prediction rests on the lesion's pixels alone: sigmoid(2) intact, sigmoid(-2) once erased."""

    def __init__(self, lesion: torch.Tensor):
        super().__init__()
        self.register_buffer("lesion", lesion.float())

    def forward(self, image: torch.Tensor, meta=None) -> torch.Tensor:
        s = (image.mean(dim=1) * self.lesion).flatten(1).sum(1) / self.lesion.sum()
        return torch.stack([torch.zeros_like(s), 4 * s - 2], dim=1)


def lesion_case(size: int = 8, side: int = 4, channels: int = 3, batch: int = 2):
    lesion = torch.zeros(size, size)
    lesion[1:1 + side, 2:2 + side] = 1
    generator = torch.Generator().manual_seed(0)
    image = lesion.expand(batch, channels, size, size).clone()
    image += 0.3 * torch.rand(image.shape, generator=generator) * (1 - lesion)  # background the model ignores
    return lesion, image, ClassScores(LesionOnly(lesion)).eval()


def test_relevance_ranks_keep_the_order_and_break_ties_at_random():
    maps = torch.tensor([[[3.0, 1.0], [1.0, 2.0]]])
    seen = set()
    for seed in range(20):
        ranks = relevance_ranks(maps, (2, 2), torch.Generator().manual_seed(seed))[0].tolist()
        assert ranks[0] == 0 and ranks[3] == 1 and sorted(ranks[1:3]) == [2, 3]
        seen.add(tuple(ranks))
    assert len(seen) == 2  # both orders of the tie occur


def test_deletion_and_insertion_by_hand():
    """8x8 image, 4x4 lesion (a quarter), 4 steps: a map equal to the lesion erases it all at the
    first step; its inverse erases the background first and the lesion at the last step."""
    lesion, image, model = lesion_case()
    classes = torch.ones(2, dtype=torch.long)
    zeros = torch.zeros_like(image)
    high, low = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))
    generator = torch.Generator().manual_seed(0)
    exact = curves(model, image, None, classes, lesion.expand(2, 8, 8), generator, zeros, steps=4)
    assert torch.allclose(exact["deletion"], torch.tensor([high, low, low, low, low]).expand(2, 5), atol=1e-6)
    assert torch.allclose(exact["insertion"], torch.tensor([low, high, high, high, high]).expand(2, 5), atol=1e-6)
    inverse = curves(model, image, None, classes, (1 - lesion).expand(2, 8, 8), generator, zeros, steps=4)
    assert torch.allclose(inverse["deletion"], torch.tensor([high, high, high, high, low]).expand(2, 5), atol=1e-6)
    assert area(exact["deletion"])[0].item() == pytest.approx(0.25 * (high / 2 + 3 * low + low / 2), abs=1e-6)
    assert area(inverse["insertion"])[0].item() == pytest.approx(0.25 * (low / 2 + 3 * low + high / 2), abs=1e-6)


def test_deletion_of_the_lesion_beats_a_random_order():
    """Toward the blurred image, as ``make explain`` runs it: the lesion's map deletes faster and
    inserts faster than every one of 20 random maps on a 4x4 grid."""
    lesion, image, model = lesion_case(size=16, side=8, batch=4)
    classes = torch.ones(4, dtype=torch.long)
    generator = torch.Generator().manual_seed(1)
    substrate = blurred(image)
    lesion_map = curves(model, image, None, classes, lesion.expand(4, 16, 16), generator, substrate, steps=8)
    for _ in range(20):
        random = curves(model, image, None, classes, random_map(4, (4, 4), generator), generator, substrate, steps=8)
        assert (area(lesion_map["deletion"]) < area(random["deletion"])).all()
        assert (area(lesion_map["insertion"]) > area(random["insertion"])).all()


def test_the_shared_end_points_are_the_image_and_the_substrate():
    """Every curve starts and ends on the image itself and on the substrate, whatever the map:
    ``end_points`` computes those two once, and curves handed them equal curves that compute them."""
    lesion, image, model = lesion_case(size=16, side=8, batch=3)
    classes = torch.tensor([1, 0, 1])
    substrate = blurred(image)
    ends = end_points(model, image, None, classes, substrate)
    on_image = model(image, None).softmax(dim=1).gather(1, classes[:, None])[:, 0]
    on_substrate = model(substrate, None).softmax(dim=1).gather(1, classes[:, None])[:, 0]
    assert torch.allclose(ends, torch.stack([on_image, on_substrate], dim=1), atol=1e-7)
    for maps in (lesion.expand(3, 16, 16), random_map(3, (4, 4), torch.Generator().manual_seed(2))):
        alone = curves(model, image, None, classes, maps, torch.Generator().manual_seed(3), substrate, steps=5)
        shared = curves(model, image, None, classes, maps, torch.Generator().manual_seed(3), substrate, steps=5, ends=ends)
        for kind in ("deletion", "insertion"):
            assert alone[kind].shape == (3, 6) and torch.allclose(alone[kind], shared[kind], atol=1e-7)
        assert torch.allclose(alone["deletion"][:, 0], on_image) and torch.allclose(alone["deletion"][:, -1], on_substrate)
        assert torch.allclose(alone["insertion"][:, 0], on_substrate) and torch.allclose(alone["insertion"][:, -1], on_image)
    single = curves(model, image, None, classes, lesion.expand(3, 16, 16), torch.Generator(), substrate, steps=1)
    assert torch.equal(single["deletion"], ends) and torch.equal(single["insertion"], ends.flip(1))


def test_the_substrate_blur_scales_with_the_image():
    image = torch.zeros(1, 3, 64, 64)
    image[..., 32, 32] = 1.0
    spread = blurred(image)[0, 0, 32]
    sigma = 0.1 * 64
    for offset in (3, 6, 10):
        expected = math.exp(-(offset**2) / (2 * sigma**2))
        assert spread[32 + offset].item() / spread[32].item() == pytest.approx(expected, rel=0.01)


def test_road_removing_the_lesion_first_beats_a_random_order():
    lesion, image, model = lesion_case(size=16, side=8, batch=2)
    classes = torch.ones(2, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    fractions = (0.25, 0.5)
    exact = road(model, image, None, classes, lesion.expand(2, 16, 16), generator, fractions)
    random = road(model, image, None, classes, random_map(2, (4, 4), generator), generator, fractions)
    assert (exact["morf"] < 0.3).all() and (exact["lerf"] > 0.85).all()
    assert (exact["morf"] < random["morf"]).all() and (exact["lerf"] >= random["lerf"] - 1e-6).all()


def test_road_is_reproducible():
    lesion, image, model = lesion_case(size=16, side=8, batch=1)
    classes = torch.ones(1, dtype=torch.long)
    maps = random_map(1, (4, 4), torch.Generator().manual_seed(5))
    first = road(model, image, None, classes, maps, torch.Generator().manual_seed(0), (0.3,), seed=2)
    second = road(model, image, None, classes, maps, torch.Generator().manual_seed(0), (0.3,), seed=2)
    assert torch.equal(first["morf"], second["morf"]) and torch.equal(first["lerf"], second["lerf"])


def test_road_agrees_with_quantus():
    """Quantus' ROAD reports whether the prediction survives (MoRF) at each percentage, on
    one-channel images (it counts percentages of a map's H x W); ours, the class probability:
    the same removals flip the same predictions."""
    quantus = pytest.importorskip("quantus")
    lesion, image, model = lesion_case(size=16, side=8, channels=1, batch=3)
    ramp = torch.linspace(0, 0.5, 256).view(16, 16)  # no ties: both take pixels in the same order
    maps = (lesion + ramp).expand(3, 16, 16)
    classes = torch.ones(3, dtype=torch.long)
    percentages = [10, 30, 50, 70]
    ours = road(model, image, None, classes, maps, torch.Generator().manual_seed(0), [p / 100 for p in percentages])
    survived = (ours["morf"] > 0.5).float().mean(dim=0).numpy()
    metric = quantus.ROAD(percentages=percentages, noise=0.01, abs=False, normalise=False, disable_warnings=True)
    theirs = metric(model=model, x_batch=image.numpy(), y_batch=classes.numpy(), a_batch=maps[:, None].numpy(),
                    device="cpu")  # fmt: skip
    assert np.array_equal(survived, np.array([theirs[p] for p in percentages], dtype=np.float32))
    assert survived[0] == 1 and survived[-1] == 0  # the check is not vacuous
