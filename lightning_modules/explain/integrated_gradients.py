"""Integrated Gradients (Sundararajan et al. 2017) from captum, pooled onto the network's grid.

    IG_i(x) = (x_i - x'_i) * integral_0^1 d y_c(x' + a (x - x')) / d x_i  da

captum integrates along the straight path from the baseline ``x'`` to the image (Gauss-Legendre
nodes, ``steps`` of them). The baseline is captum's default, zeros: in the network's normalised
input that is the image of the normalisation mean colour. The pixel attributions are summed over
the colour channels and over each cell of the grid the network's attention lies on, and only the
positive part is kept (evidence for the class, as Grad-CAM keeps it), so IG is scored on the same
grid and with the same sign convention as the other maps.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients

from lightning_modules.explain.target import ClassScores

#: Gauss-Legendre nodes of the path integral: each is a forward and backward pass per image.
STEPS = 16


def pool_to_grid(pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W)`` pixel values summed over the cells of an ``(h, w)`` grid (``adaptive_avg_pool2d``
    times the cell area when the grid divides the image; otherwise a cell's mean stands in)."""
    h, w = pixels.shape[-2:]
    area = (h / grid[0]) * (w / grid[1])
    return F.adaptive_avg_pool2d(pixels[:, None], grid)[:, 0] * area


def integrated_gradients(model: ClassScores, image: torch.Tensor, meta: Optional[torch.Tensor],
                         classes: torch.Tensor, grid: tuple[int, int], steps: int = STEPS,
                         internal_batch_size: Optional[int] = 256) -> torch.Tensor:
    """``(B, h, w)`` positive IG evidence for ``classes`` per cell of ``grid``."""
    method = IntegratedGradients(model)
    args = (meta,) if meta is not None else None
    with torch.enable_grad():
        attributions = method.attribute(image, target=classes, additional_forward_args=args, n_steps=steps,
                                        internal_batch_size=internal_batch_size)  # fmt: skip
    return pool_to_grid(attributions.detach().sum(dim=1), grid).clamp_min(0)
