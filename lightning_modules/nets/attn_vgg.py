"""AttnVGG ("Learn to Pay Attention", Jetley et al. ICLR 2018), as used for melanoma in AttnMel
(Yan et al., IPMI 2019), on any timm backbone.

    image -> backbone stages: l1 (1/8), l2 (1/16), x (1/32)
    attention block i:  c_i = phi(relu(W_l l_i + up(W_g x)))            (B, 1, h_i, w_i)
                        a_i = softmax over the grid (normalize_attn) or sigmoid(c_i)
                        g_i = sum(a_i * l_i)  (softmax)   or  mean(a_i * l_i)  (sigmoid)
    g = global average pool of x
    logits = classifier([g, g_1, g_2])

Differences, on purpose, from the official code
(https://github.com/SaoYan/IPMI2019-AttnMel/tree/e214a3797a04e66647844e582ee10b4833342759, networks.py
and train.py) and from a widely copied public notebook based on it (the Kaggle kernel "VGG16 with
Attention" for SIIM-ISIC 2020, e.g. as copied in
https://github.com/vaishali-vcs/melanoma_Classification/blob/4b5949c1a0183d9d5ae9e3ac147892b5e6ef59c5/3_vgg16attention.ipynb):
the global feature is pooled adaptively (their ``AvgPool2d(7)`` only fits 224 px inputs), the
upsampling goes to each local map's real size (not a fixed x4 / x2 that again assumes 224 px), and
nothing is ``.squeeze()``d (the official train.py squeezes the batch's probabilities), so a batch
of one keeps its batch axis.

Stages: timm's VGG exposes features *before* each pooling, so for VGG the paper's pool-3 and
pool-4 maps are the 1/4 and 1/8 stages max-pooled once (``pool_local_stages``, automatic for
``vgg*``); other backbones use their 1/8 and 1/16 stages directly.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.nets.backbones import create_backbone


class AttentionBlock(nn.Module):
    def __init__(self, local_channels: int, global_channels: int, attention_channels: int = 256,
                 normalize_attn: bool = True):
        super().__init__()
        self.normalize_attn = normalize_attn
        self.W_l = nn.Conv2d(local_channels, attention_channels, 1, bias=False)
        self.W_g = nn.Conv2d(global_channels, attention_channels, 1, bias=False)
        self.phi = nn.Conv2d(attention_channels, 1, 1, bias=True)

    def forward(self, local: torch.Tensor, global_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(attention (B, h, w), attended feature (B, C_local))``."""
        g = F.interpolate(self.W_g(global_map), size=local.shape[-2:], mode="bilinear", align_corners=False)
        c = self.phi(F.relu(self.W_l(local) + g))  # (B, 1, h, w) compatibility scores
        if self.normalize_attn:
            a = F.softmax(c.flatten(2), dim=2).view_as(c)
            feature = (a * local).flatten(2).sum(dim=2)
        else:
            a = torch.sigmoid(c)
            feature = (a * local).mean(dim=(2, 3))
        return a[:, 0], feature


class AttnVGG(nn.Module):
    def __init__(
        self,
        num_classes: int,
        meta_dim: int = 0,
        backbone: str = "vgg16_bn",
        pretrained: bool = False,
        weights_path: Optional[str] = None,
        attention_channels: int = 256,
        normalize_attn: bool = True,
        local_reductions: Sequence[int] = (8, 16),
        pool_local_stages: Optional[bool] = None,
        dropout: float = 0.0,
        init: str = "default",
    ):
        """
        Args:
            num_classes: classifier outputs; ``meta_dim`` is accepted and unused (image only).
            backbone: any timm model (VGG-16-BN as in the paper); attention sits on its stages
                at ``local_reductions`` (1/8 and 1/16 of the input: pool-3 and pool-4 for VGG).
            normalize_attn: spatial softmax attention (sum of attended features) or sigmoid
                attention (average of attended features).
            pool_local_stages: max-pool the local stages once (automatic for ``vgg*``, whose
                timm stages end before their pooling).
            init: ``default`` (PyTorch's initialisation of the new layers) or ``official`` (the
                AttnMel code's ``reset_parameters`` in its networks.py: Kaiming-normal attention
                convolutions, zero biases, classifier weights from N(0, 0.01)).
        """
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained, weights_path)
        reductions = list(self.backbone.feature_info.reduction())
        channels = list(self.backbone.feature_info.channels())
        self.pool_local = backbone.startswith("vgg") if pool_local_stages is None else pool_local_stages
        wanted = [r // 2 if self.pool_local else r for r in local_reductions]
        missing = [r for r in wanted if r not in reductions]
        if missing:
            raise ValueError(f"{backbone} has no feature stage at reduction(s) {missing}; it has {reductions}")
        self.local_stages = [reductions.index(r) for r in wanted]
        self.attention_names = tuple(f"attn{k}" for k in range(1, len(self.local_stages) + 1))
        # timm VGG stages end before their pooling: pool-3/pool-4 are these maps max-pooled by 2.
        # A module (not F.max_pool2d) so that Grad-CAM can hook the exact grid the attention sees.
        self.local_pools = nn.ModuleList(nn.MaxPool2d(2) if self.pool_local else nn.Identity()
                                         for _ in self.local_stages)
        global_channels = channels[-1]
        self.attention = nn.ModuleList(
            AttentionBlock(channels[i], global_channels, attention_channels, normalize_attn)
            for i in self.local_stages
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(global_channels + sum(channels[i] for i in self.local_stages), num_classes)
        if init == "official":
            for conv in (m for block in self.attention for m in block.modules() if isinstance(m, nn.Conv2d)):
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)
        elif init != "default":
            raise ValueError(f"init must be 'default' or 'official', got {init!r}")

    @property
    def gradcam_target(self) -> tuple[nn.Module, Callable]:
        """Grad-CAM's layer and output selector: the finest attended map (``attn1``'s grid)."""
        return self.local_pools[0], lambda out: out

    def forward_with_attention(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None):
        """``(logits (B, K), {"attn1": (B, h1, w1), "attn2": ...})``."""
        stages = self.backbone(image)
        x = stages[-1]
        features = [x.mean(dim=(2, 3))]
        maps = {}
        for name, i, pool, block in zip(self.attention_names, self.local_stages, self.local_pools, self.attention):
            maps[name], attended = block(pool(stages[i]), x)
            features.append(attended)
        return self.classifier(self.dropout(torch.cat(features, dim=1))), maps

    def forward(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_with_attention(image, meta)[0]
