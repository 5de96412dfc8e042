"""How much of each attention map, and of Grad-CAM, falls on the lesion, over a whole split."""

from __future__ import annotations

from typing import Iterable

import torch

from lightning_modules.analysis.gradcam import grad_cam
from lightning_modules.contracts import AttentionNet, GradCamNet
from lightning_modules.metrics.lesion_mass import LesionMass


def lesion_mass_report(module, batches: Iterable[dict], gradcam_layer=None) -> dict[str, float]:
    """Mean lesion mass of every attention map of ``module``'s network (and of Grad-CAM on
    ``gradcam_layer``, default the network's ``gradcam_target``: the grid of its finest attention
    map) over batches that carry lesion masks. ``module(image, meta)`` gives the logits."""
    module.eval()
    net = module.net
    if not isinstance(net, AttentionNet):
        raise TypeError(f"{type(net).__name__} has no attention maps to score")
    if gradcam_layer is not None:
        layer, select = gradcam_layer, lambda out: out[-1] if isinstance(out, (list, tuple)) else out
    elif isinstance(net, GradCamNet):
        layer, select = net.gradcam_target
    else:
        raise TypeError(f"{type(net).__name__} names no Grad-CAM target: pass gradcam_layer")
    scores: dict[str, LesionMass] = {}
    for batch in batches:
        image, meta, mask = (batch[k].to(module.device) for k in ("image", "meta", "mask"))
        with torch.no_grad():
            maps = dict(net.forward_with_attention(image, meta)[1])
        maps["gradcam"] = grad_cam(module, layer, image, meta, select=select)
        for name, attention in maps.items():
            scores.setdefault(name, LesionMass()).update(attention.cpu(), mask.cpu())
    return {name: float(metric.compute()) for name, metric in scores.items()}
