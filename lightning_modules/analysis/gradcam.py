"""Grad-CAM (Selvaraju et al. 2017): post-hoc class activation maps, for comparison with
trainable attention (Grad-CAM explains a fixed model; it does not change what the model looks
at, which trainable attention does).

    cam = relu( sum_k  mean_{h,w}(d score_c / d A_k) * A_k )      A = the target layer's map

The activation is captured by a forward hook that lives only inside a ``with`` block, so no
hook outlives its use.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch import nn


@contextmanager
def capture_output(layer: nn.Module, select: Callable = lambda out: out) -> Iterator[dict]:
    """Within the block, ``store["activation"]`` holds ``select(layer output)`` of the last call.

    If that map does not require grad (frozen layers, or the layer sees the input directly) it is
    swapped for a leaf that does, so gradients with respect to it always exist."""
    store: dict = {}

    def hook(_module, _inputs, output):
        activation = select(output)
        if activation.requires_grad:
            store["activation"] = activation
            return None
        leaf = activation.detach().requires_grad_(True)
        store["activation"] = leaf
        if isinstance(output, (list, tuple)):
            return type(output)(leaf if item is activation else item for item in output)
        return leaf

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def grad_cam(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    layer: nn.Module,
    image: torch.Tensor,
    meta: torch.Tensor,
    class_index: Optional[torch.Tensor] = None,
    select: Callable = lambda out: out[-1] if isinstance(out, (list, tuple)) else out,
) -> torch.Tensor:
    """Grad-CAM maps ``(B, h, w)`` on ``layer``'s grid for ``class_index`` (default: the
    predicted class). ``forward(image, meta) -> logits``; ``select`` picks the map from the
    layer's output (timm feature extractors return a list: the last map by default)."""
    with torch.enable_grad(), capture_output(layer, select) as store:
        logits = forward(image, meta)
        activation = store["activation"]
        if class_index is None:
            class_index = logits.argmax(dim=1)
        score = logits.gather(1, class_index.view(-1, 1)).sum()
        (gradient,) = torch.autograd.grad(score, activation)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activation).sum(dim=1)).detach()
