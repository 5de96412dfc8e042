"""Classification losses (later issues add the ProtoPNet, contrastive and divergence costs)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017), ``-w_y (1 - p_y)^gamma log p_y``.

    With class weights, the mean is taken over the weights of the targets, exactly like
    ``F.cross_entropy(weight=...)``, so ``gamma=0`` reproduces weighted cross-entropy and the
    loss scale does not change when weights are switched on. Computed from logits with
    ``log_softmax`` (never from probabilities: the seed notebook fed sigmoid outputs to a loss
    that applies its own).
    """

    def __init__(self, gamma: float = 2.0, weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is None:
            return loss.mean()
        w = self.weight[target]
        return (w * loss).sum() / w.sum()


def classification_loss(kind: str, class_weights: Optional[list[float]], gamma: float = 2.0) -> nn.Module:
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    if kind == "ce":
        return nn.CrossEntropyLoss(weight=weight)
    if kind == "focal":
        return FocalLoss(gamma=gamma, weight=weight)
    raise ValueError(f"loss must be 'ce' or 'focal', got {kind!r}")
