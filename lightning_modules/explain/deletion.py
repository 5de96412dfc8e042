"""Deletion and insertion curves (Petsiuk et al. 2018, RISE): does the model depend on what the
map highlights?

    order the pixels by the map (most relevant first; the map resized to the image bilinearly)
    deletion:  step k = 0..T replaces the first k/T of them by a blurred copy of the image
    insertion: step k reveals the first k/T of them on the blurred copy
    curve: the probability of the explained class at each step; score: its area over [0, 1]

A faithful map makes the probability fall fast on deletion (low area) and rise fast on insertion
(high area); a random order is the bar to clear. Both curves go toward the same blurred image
(RISE's insertion canvas), which removes the lesion's shape but keeps the image's colours, so
the model sees fewer out-of-range inputs than with black; the blur scales with the image
(``sigma = BLUR_SIGMA * side``). Pixels of equal relevance are taken in a random order (seeded),
so a map's plateaus do not favour one corner.

Cost: ``T - 1`` forward passes per image and curve, plus two per image for the end points that
every curve shares (the image itself and the substrate); every step of every image in a batch
goes through the network together, ``chunk`` images per forward pass.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torchvision.transforms.functional import gaussian_blur

from lightning_modules.explain.target import ClassScores
from lightning_modules.utils.images import upsample

#: The substrate's Gaussian blur: standard deviation as a fraction of the image side.
BLUR_SIGMA = 0.1
#: Steps of a curve (T): 1/T of the pixels are removed or revealed per step. Each step is a forward
#: pass per image and map; 10 steps of 10 % keep a default run's 382 test images within minutes.
STEPS = 10


def blurred(image: torch.Tensor, sigma_fraction: float = BLUR_SIGMA) -> torch.Tensor:
    """The images Gaussian-blurred with sigma = ``sigma_fraction`` x the side (kernel +-3 sigma)."""
    sigma = sigma_fraction * max(image.shape[-2:])
    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(image, [size, size], [sigma, sigma])


def relevance_ranks(maps: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``(B, H*W)``: each pixel's place in the order of relevance (0 = most relevant) of the maps
    resized to ``size``; ties in a random order drawn from ``generator``."""
    values = upsample(maps.float().cpu(), size).flatten(1)
    b, n = values.shape
    shuffle = torch.stack([torch.randperm(n, generator=generator) for _ in range(b)])
    order = values.gather(1, shuffle).argsort(dim=1, descending=True, stable=True)
    order = shuffle.gather(1, order)  # pixel indices, most relevant first
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n).expand(b, n).contiguous())
    return ranks


@torch.no_grad()
def class_probabilities(model: ClassScores, images: torch.Tensor, meta: Optional[torch.Tensor],
                        classes: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Probability of ``classes[i]`` for ``images[i]`` (``meta[i]``), ``chunk`` images per pass."""
    out = []
    for start in range(0, len(images), chunk):
        part = slice(start, start + chunk)
        logits = model(images[part], None if meta is None else meta[part]).float()
        out.append(logits.softmax(dim=1).gather(1, classes[part, None])[:, 0])
    return torch.cat(out)


def end_points(model: ClassScores, image: torch.Tensor, meta: Optional[torch.Tensor], classes: torch.Tensor,
               substrate: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """``(B, 2)``: the class probability on the image itself and on the substrate. Every curve
    starts and ends on these two inputs whatever the map (deletion runs from the image to the
    substrate, insertion back), so they are computed once per image, not twice per map."""
    pair = torch.stack([image, substrate], dim=1).flatten(0, 1)
    repeat = lambda t: t.repeat_interleave(2, dim=0)  # noqa: E731
    return class_probabilities(model, pair, None if meta is None else repeat(meta), repeat(classes), chunk).view(-1, 2)


def curves(model: ClassScores, image: torch.Tensor, meta: Optional[torch.Tensor], classes: torch.Tensor,
           maps: torch.Tensor, generator: torch.Generator, substrate: Optional[torch.Tensor] = None,
           steps: int = STEPS, chunk: int = 512, ends: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """``{"deletion": (B, T+1), "insertion": (B, T+1)}`` class probabilities along the order of
    ``maps`` (any grid). ``ends``: :func:`end_points` of these images, when already computed for
    another map (only the ``T - 1`` inner steps of each curve depend on the map)."""
    b, c, h, w = image.shape
    n = h * w
    substrate = blurred(image) if substrate is None else substrate
    if ends is None:
        ends = end_points(model, image, meta, classes, substrate, chunk)
    ranks = relevance_ranks(maps, (h, w), generator).to(image.device)
    inner = steps - 1
    if inner > 0:
        counts = torch.tensor([round(k * n / steps) for k in range(1, steps)], device=image.device)
        changed = (ranks[:, None, :] < counts[None, :, None]).view(b, inner, 1, h, w)
        original, canvas = image[:, None], substrate[:, None]
        inputs = torch.cat([torch.where(changed, canvas, original), torch.where(changed, original, canvas)], dim=1)
        repeat = lambda t: t.repeat_interleave(2 * inner, dim=0)  # noqa: E731
        probs = class_probabilities(model, inputs.flatten(0, 1), None if meta is None else repeat(meta),
                                    repeat(classes), chunk).view(b, 2, inner)  # fmt: skip
    else:
        probs = image.new_zeros(b, 2, 0)
    ends = ends.to(probs)
    on_image, on_substrate = ends[:, :1], ends[:, 1:]
    return {"deletion": torch.cat([on_image, probs[:, 0], on_substrate], dim=1),
            "insertion": torch.cat([on_substrate, probs[:, 1], on_image], dim=1)}


def area(curve: torch.Tensor) -> torch.Tensor:
    """Area under ``(B, T+1)`` curves sampled at k/T, k = 0..T (trapezoids)."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), dim=-1)
