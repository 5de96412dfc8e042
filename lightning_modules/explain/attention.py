"""The maps a network makes itself: every trainable attention map (AttnVGG's blocks, soft
attention's, ABE-M's learner masks) and ProtoPNet's similarity maps (of the most activated
prototype, and the predicted class's prototypes weighted by the last layer), each on its own
grid, as ``forward_with_attention`` returns them."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lightning_modules.contracts import AttentionNet


def attention_names(net: nn.Module) -> tuple[str, ...]:
    return tuple(net.attention_names) if isinstance(net, AttentionNet) else ()


@torch.no_grad()
def attention_maps(net: nn.Module, image: torch.Tensor, meta: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: (B, h, w)}`` (empty for a network without attention, or ABE-M's M-heads)."""
    if not attention_names(net):
        return {}
    return {name: m.detach().float() for name, m in net.forward_with_attention(image, meta)[1].items()}
