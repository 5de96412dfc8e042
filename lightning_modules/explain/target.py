"""The network as the explanation libraries see it: one image tensor in, class scores out, and a
layer whose output is the grid the network's attention lies on.

pytorch-grad-cam and captum call ``model(image)``; our networks take ``(image, meta)`` and
ProtoPNet returns a named tuple, so :class:`ClassScores` binds the batch's metadata and returns
the logits. pytorch-grad-cam records a target layer's gradient only when that layer's output is
one tensor that requires grad (``ActivationsAndGradients.save_gradient``); a network's grid is
sometimes one entry of a list (a timm feature extractor's stages) or the output of a frozen
layer, so :func:`tapped` runs an identity module on ``select(layer output)`` (made to require
grad when it does not) and that tap is what the libraries hook. Every hook lives only inside a
``with`` block.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from lightning_modules.contracts import GradCamNet

Select = Callable[[Any], torch.Tensor]


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a network's output (ProtoPNet returns them inside a named tuple)."""
    return output.logits if hasattr(output, "logits") else output


class ClassScores(nn.Module):
    """``net(image, meta)`` as ``f(image[, meta]) -> logits (B, K)``.

    Without ``meta`` the metadata bound by :meth:`bound` is used, broadcast when the library
    passes several copies of one image (Score-CAM's masked inputs); captum hands ``meta`` over
    itself (``additional_forward_args``), expanded along its interpolation steps."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.meta: Optional[torch.Tensor] = None

    @contextmanager
    def bound(self, meta: Optional[torch.Tensor]) -> Iterator["ClassScores"]:
        previous, self.meta = self.meta, meta
        try:
            yield self
        finally:
            self.meta = previous

    def forward(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None) -> torch.Tensor:
        meta = self.meta if meta is None else meta
        if meta is not None and meta.shape[0] != image.shape[0]:
            if meta.shape[0] != 1:
                raise ValueError(f"metadata for {meta.shape[0]} images bound, but {image.shape[0]} images passed")
            meta = meta.expand(image.shape[0], *meta.shape[1:])
        return logits_of(self.net(image, meta))


def grid_target(net: nn.Module) -> tuple[nn.Module, Select]:
    """``(layer, select)`` whose selected output is the grid post-hoc maps are taken on: the
    network's ``gradcam_target`` (the grid of its finest attention map); otherwise the backbone
    stage its maps lie on: ProtoPNet's latent grid is its backbone stage's (the add-on layers are
    1x1), ABE-M's learner masks lie on the output of its shared part ``spatial``; any other
    network: the last backbone stage."""
    if isinstance(net, GradCamNet):
        return net.gradcam_target
    if hasattr(net, "spatial"):  # ABE-M
        return net.spatial, lambda out: out
    backbone = getattr(net, "backbone", None)
    if backbone is None:
        raise TypeError(f"{type(net).__name__} names no gradcam_target and has no backbone to take a grid from")
    return backbone, lambda out: out[-1] if isinstance(out, (list, tuple)) else out


def _replace(output: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    if output is old:
        return new
    if isinstance(output, (list, tuple)):
        return type(output)(new if item is old else item for item in output)
    raise TypeError(f"cannot put the tapped map back into a layer output of type {type(output).__name__}")


@contextmanager
def tapped(layer: nn.Module, select: Select = lambda out: out) -> Iterator[nn.Module]:
    """Within the block, every forward pass of ``layer`` runs an identity module (yielded) on
    ``select(layer output)``; with gradients enabled the map is made to require grad (a leaf
    swapped in for a frozen layer's output), so gradients with respect to it always exist."""
    tap = nn.Identity()

    def hook(_module, _inputs, output):
        selected = select(output)
        through = selected
        if torch.is_grad_enabled() and not selected.requires_grad:
            through = selected.detach().requires_grad_(True)
        through = tap(through)
        return None if through is selected else _replace(output, selected, through)

    handle = layer.register_forward_hook(hook)
    try:
        yield tap
    finally:
        handle.remove()


@torch.no_grad()
def grid_shape(net: nn.Module, image: torch.Tensor, meta: Optional[torch.Tensor]) -> tuple[int, int]:
    """``(h, w)`` of the grid :func:`grid_target` selects, for images like ``image``."""
    layer, select = grid_target(net)
    found: dict = {}

    def record(_module, _inputs, output) -> None:
        found.setdefault("shape", tuple(output.shape[-2:]))

    with tapped(layer, select) as tap:
        handle = tap.register_forward_hook(record)
        try:
            net(image[:1], None if meta is None else meta[:1])
        finally:
            handle.remove()
    return found["shape"]
