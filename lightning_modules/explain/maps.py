"""Every map a trained network offers for a batch, by method name.

    attention             the network's own maps (``attention.attention_maps``), each by its name
    gradcam, gradcam++,   pytorch-grad-cam on the network's grid (``cams``)
    scorecam, eigencam
    integrated_gradients  captum, pooled onto that grid (``integrated_gradients``)

The class-explaining methods need class scores, which a classifier has and an embedding network
(ABE-M) does not: for it, the attention masks and EigenCAM only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from lightning_modules.explain.attention import attention_maps, attention_names
from lightning_modules.explain.cams import CAMS, CLASS_CAMS, cam_maps
from lightning_modules.explain.integrated_gradients import STEPS as IG_STEPS, integrated_gradients
from lightning_modules.explain.target import ClassScores, grid_target

METHODS = ("attention", "gradcam", "gradcam++", "scorecam", "eigencam", "integrated_gradients")
CLASS_METHODS = (*CLASS_CAMS, "integrated_gradients")


def offered(net, classifies: bool, methods: Sequence[str] = METHODS) -> list[str]:
    """The methods of ``methods`` that apply to ``net``."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown explanation method(s) {unknown}; choose from {list(METHODS)}")
    return [m for m in methods if (m != "attention" or attention_names(net)) and (classifies or m not in CLASS_METHODS)]


def compute_maps(net, image: torch.Tensor, meta: Optional[torch.Tensor], classes: Optional[torch.Tensor],
                 methods: Sequence[str], grid: tuple[int, int], ig_steps: int = IG_STEPS) -> dict[str, torch.Tensor]:
    """``{map name: (B, h, w)}`` for ``methods`` (already filtered by :func:`offered`), explaining
    ``classes`` (``None``: no class scores, EigenCAM and attention only)."""
    model = ClassScores(net).eval()
    layer, select = grid_target(net)
    maps: dict[str, torch.Tensor] = {}
    for method in methods:
        if method == "attention":
            maps.update(attention_maps(net, image, meta))
        elif method in CAMS:
            maps[method] = cam_maps(method, model, layer, select, image, meta, classes)
        elif method == "integrated_gradients":
            maps[method] = integrated_gradients(model, image, meta, classes, grid, steps=ig_steps)
    return {name: m.detach().float().cpu() for name, m in maps.items()}
