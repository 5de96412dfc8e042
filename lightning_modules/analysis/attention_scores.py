"""How much of each attention map, and of Grad-CAM, falls on the lesion, over a whole split."""

from __future__ import annotations

from typing import Iterable

import torch

from lightning_modules.analysis.gradcam import grad_cam
from lightning_modules.attention import LesionMass


def lesion_mass_report(module, batches: Iterable[dict], gradcam_layer=None) -> dict[str, float]:
    """Mean lesion mass of every attention map of ``module`` (and of Grad-CAM on
    ``gradcam_layer``, default the grid of the network's finest attention map) over batches that
    carry lesion masks."""
    module.eval()
    if gradcam_layer is not None:
        layer, select = gradcam_layer, lambda out: out[-1] if isinstance(out, (list, tuple)) else out
    else:
        layer, select = module.net.gradcam_target
    scores: dict[str, LesionMass] = {}
    for batch in batches:
        image, meta, mask = (batch[k].to(module.device) for k in ("image", "meta", "mask"))
        with torch.no_grad():
            maps = module.attention_maps(image, meta)
        maps["gradcam"] = grad_cam(module, layer, image, meta, select=select)
        for name, attention in maps.items():
            scores.setdefault(name, LesionMass()).update(attention.cpu(), mask.cpu())
    return {name: float(metric.compute()) for name, metric in scores.items()}
