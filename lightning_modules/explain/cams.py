"""Class activation maps from pytorch-grad-cam (``grad-cam``), on the network's own grid.

    Grad-CAM    relu( sum_k mean_hw(dy_c/dA_k) A_k )                 (Selvaraju et al. 2017)
    Grad-CAM++  the same with positive, second-order-weighted gradients (Chattopadhay et al. 2018)
    Score-CAM   channels weighted by the softmax of the class score of the image masked by each
                upsampled channel; gradient-free, one forward pass per channel (Wang et al. 2020)
    EigenCAM    the activations' first principal component; gradient- and class-free (Muhammad &
                Yeasin 2020): the one post-hoc map ABE-M, which has no classes, gets too

A = ``select(layer output)`` of :func:`~lightning_modules.explain.target.grid_target`: the grid of
the network's finest attention map, so attention and the post-hoc maps are compared cell for cell.
The library's ``BaseCAM`` ends by rescaling every map to [0, 1] (subtracting its minimum) and
resizing it to the input image; :class:`OnGrid` stops before that step and returns the ReLU'd
maps on the grid as they are, because subtracting the minimum changes a map's relevance mass
(the share inside the lesion) and every metric here resizes maps the same way itself.
"""

from __future__ import annotations

import contextlib
import io
from typing import Iterator, Optional

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from lightning_modules.explain.target import ClassScores, Select, tapped

#: Masked copies of one image per forward pass in Score-CAM (the library's default is 16).
SCORECAM_BATCH = 128


class OnGrid:
    """``BaseCAM`` returning the maps of its (single) target layer on that layer's grid, ReLU'd and
    otherwise as computed: ``compute_cam_per_layer`` without its ``scale_cam_image``."""

    def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
        activations = [a.cpu().numpy() for a in self.activations_and_grads.activations]
        gradients = [g.cpu().numpy() for g in self.activations_and_grads.gradients]
        maps = []
        for i, layer in enumerate(self.target_layers):
            gradient = gradients[i] if i < len(gradients) else None
            cam = self.get_cam_image(input_tensor, layer, targets, activations[i], gradient, eigen_smooth)
            maps.append(np.maximum(cam, 0)[:, None])
        return maps

    def aggregate_multi_layers(self, maps):
        return np.concatenate(maps, axis=1).mean(axis=1)


class GridGradCAM(OnGrid, GradCAM):
    pass


class GridGradCAMPlusPlus(OnGrid, GradCAMPlusPlus):
    pass


class GridScoreCAM(OnGrid, ScoreCAM):
    pass


class GridEigenCAM(OnGrid, EigenCAM):
    pass


CAMS = {"gradcam": GridGradCAM, "gradcam++": GridGradCAMPlusPlus, "scorecam": GridScoreCAM, "eigencam": GridEigenCAM}
#: The CAMs that explain a class (EigenCAM does not: it needs no class scores).
CLASS_CAMS = ("gradcam", "gradcam++", "scorecam")


@contextlib.contextmanager
def _cam(method: str, model: ClassScores, tap) -> Iterator:
    """The library's CAM object, its hooks released on leaving. (``BaseCAM.__exit__`` would also
    swallow an ``IndexError`` raised inside the block: not used for that reason.)"""
    cam = CAMS[method](model, [tap])
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


def cam_maps(method: str, model: ClassScores, layer, select: Select, image: torch.Tensor,
             meta: Optional[torch.Tensor], classes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(B, h, w)`` maps of ``method`` (a key of :data:`CAMS`) for ``classes`` (default: the
    predicted ones; EigenCAM ignores them) on the grid ``select(layer output)``."""
    if method not in CAMS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {sorted(CAMS)}")
    if classes is None and method != "eigencam":
        with torch.no_grad():
            classes = model(image, meta).argmax(dim=1)
    targets = [ClassifierOutputTarget(int(c)) for c in classes] if classes is not None else [None] * len(image)
    with tapped(layer, select) as tap, _cam(method, model, tap) as cam, torch.enable_grad():
        if method != "scorecam":
            with model.bound(meta):
                return torch.from_numpy(cam(input_tensor=image, targets=targets)).to(image.device)
        # Score-CAM runs the masked copies of each image through the model, so the metadata bound
        # is that image's; its per-image progress bars (tqdm on stderr) are silenced.
        cam.batch_size = SCORECAM_BATCH
        maps = []
        for i in range(len(image)):
            with model.bound(None if meta is None else meta[i:i + 1]), contextlib.redirect_stderr(io.StringIO()):
                maps.append(torch.from_numpy(cam(input_tensor=image[i:i + 1], targets=targets[i:i + 1])))
        return torch.cat(maps).to(image.device)
