"""Grad-CAM (Selvaraju et al. 2017): post-hoc class activation maps, for comparison with
trainable attention (Grad-CAM explains a fixed model; it does not change what the model looks
at, which trainable attention does).

    cam = relu( sum_k  mean_{h,w}(d score_c / d A_k) * A_k )      A = the target layer's map

Computed by pytorch-grad-cam's ``GradCAM`` on the layer's own grid
(:mod:`lightning_modules.explain.cams`, where Grad-CAM++, Score-CAM and EigenCAM live too); this
module keeps the project's one-call form, used at test time for ``test/gradcam_lesion_mass``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from lightning_modules.explain.cams import cam_maps
from lightning_modules.explain.target import ClassScores


def grad_cam(
    model: nn.Module,
    layer: nn.Module,
    image: torch.Tensor,
    meta: Optional[torch.Tensor],
    class_index: Optional[torch.Tensor] = None,
    select: Callable = lambda out: out[-1] if isinstance(out, (list, tuple)) else out,
) -> torch.Tensor:
    """Grad-CAM maps ``(B, h, w)`` on ``layer``'s grid for ``class_index`` (default: the
    predicted class). ``model(image, meta)`` gives the logits (a module or a network; ProtoPNet's
    output tuple is read for its logits); ``select`` picks the map from the layer's output (timm
    feature extractors return a list: the last map by default). The layer may be frozen or see
    the input directly: the map is then made to require grad (``explain.target.tapped``)."""
    return cam_maps("gradcam", ClassScores(model), layer, select, image, meta, class_index)
