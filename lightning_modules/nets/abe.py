"""ABE-M: attention-based ensemble for deep metric learning (Kim et al., ECCV 2018).

    S = backbone up to the split stage (shared spatial feature extractor)
    G = the rest of the backbone + global average pool + linear to D/M  (shared embedding function)
    A_m = sigmoid(1x1 conv(S(x)))        M attention modules: masks the shape of S(x)
    learner m:  B_m(x) = normalize( G( S(x) * A_m(S(x)) ) )          (D/M dims each)
    ensemble:   [B_1(x), ..., B_M(x)]                                 (D dims)

Only the attention modules differ between learners, so ABE-M costs one backbone plus M cheap
1x1 convolutions and M passes through G. ``ensemble="heads"`` is the paper's M-heads baseline:
M separate copies of G on S(x), no attention.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.nets.backbones import create_backbone


def backbone_sequence(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The feature extractor's modules in execution order, when it runs them one after another
    (timm's FeatureListNet for ResNet/VGG/ConvNeXt/RegNet/..., and the EfficientNet/MobileNet
    feature classes, whose ``blocks`` run in sequence after the stem)."""
    if hasattr(backbone, "return_layers") and hasattr(backbone, "items"):
        return [(name.replace("_", "."), module) for name, module in backbone.items()]
    if hasattr(backbone, "blocks") and hasattr(backbone, "conv_stem"):
        stem = [(n, getattr(backbone, n)) for n in ("conv_stem", "bn1", "act1") if hasattr(backbone, n)]
        return stem + [(f"blocks.{i}", block) for i, block in enumerate(backbone.blocks)]
    raise ValueError(f"cannot split {type(backbone).__name__} into S and G: its modules do not run in sequence")


def split_backbone(backbone: nn.Module, stage: int) -> tuple[nn.Sequential, nn.Sequential, int, int]:
    """``(S, G, channels of S(x), channels of G's output)``: S ends with feature stage ``stage``
    (an index into ``feature_info``, negative from the deepest), G runs the remaining stages."""
    sequence = backbone_sequence(backbone)
    names = [name for name, _ in sequence]
    modules = [m.replace("_", ".") for m in backbone.feature_info.module_name()]
    channels = backbone.feature_info.channels()
    stage = stage % len(modules)
    if stage == len(modules) - 1:
        raise ValueError("the split stage must leave at least one stage for G")
    cut = names.index(modules[stage]) + 1
    end = names.index(modules[-1]) + 1
    s = nn.Sequential(*[m for _, m in sequence[:cut]])
    g = nn.Sequential(*[m for _, m in sequence[cut:end]])
    return s, g, channels[stage], channels[-1]


class ABE(nn.Module):
    def __init__(
        self,
        num_classes: int = 0,
        meta_dim: int = 0,
        backbone: str = "resnet18",
        num_learners: int = 4,
        embedding_dim: int = 512,
        split_stage: int = -2,
        ensemble: str = "attention",
        pretrained: bool = False,
        weights_path: Optional[str] = None,
    ):
        """
        Args:
            num_classes, meta_dim: accepted for the common network signature and unused (the
                embedding does not depend on the classes; images only).
            num_learners: M; each learner embeds into ``embedding_dim // M`` dimensions.
            split_stage: the ``feature_info`` stage where S ends and G begins.
            ensemble: ``attention`` (ABE-M) or ``heads`` (M-heads: separate G's, no attention).
        """
        super().__init__()
        if embedding_dim % num_learners:
            raise ValueError(f"embedding_dim {embedding_dim} must be divisible by num_learners {num_learners}")
        if ensemble not in ("attention", "heads"):
            raise ValueError(f"ensemble must be 'attention' or 'heads', got {ensemble!r}")
        self.num_learners, self.ensemble = num_learners, ensemble
        self.learner_dim = embedding_dim // num_learners
        self.attention_names = tuple(f"learner{m}" for m in range(num_learners)) if ensemble == "attention" else ()
        self.spatial, g, s_channels, g_channels = split_backbone(
            create_backbone(backbone, pretrained, weights_path), split_stage
        )
        def head(stages: nn.Module) -> nn.Sequential:
            return nn.Sequential(stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(g_channels, self.learner_dim))

        if ensemble == "attention":
            self.embedding_head = head(g)  # G + pool + linear, shared by the learners
            self.attention = nn.ModuleList(nn.Conv2d(s_channels, s_channels, 1) for _ in range(num_learners))
        else:
            # Each head: a copy of G (the same pretrained weights, as in the paper's M-heads) and
            # its own, independently initialised embedding layer. Identical heads would receive
            # identical gradients and never become different learners.
            self.heads = nn.ModuleList([head(g)] + [head(copy.deepcopy(g)) for _ in range(num_learners - 1)])

    def attention_masks(self, spatial: torch.Tensor) -> torch.Tensor:
        """(B, M, C, H, W) sigmoid masks of the M attention modules."""
        return torch.stack([torch.sigmoid(a(spatial)) for a in self.attention], dim=1)

    def forward_with_attention(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None):
        """L2-normalised learner embeddings (B, M, D/M) and ``{"learner<m>": (B, H, W)}`` (each
        mask averaged over channels; none for M-heads)."""
        spatial = self.spatial(image)
        b = spatial.shape[0]
        maps = {}
        if self.ensemble == "attention":
            masks = self.attention_masks(spatial)
            attended = (spatial[:, None] * masks).flatten(0, 1)  # all learners in one pass through G
            embeddings = self.embedding_head(attended).view(b, self.num_learners, self.learner_dim)
            maps = {f"learner{m}": masks[:, m].mean(dim=1) for m in range(self.num_learners)}
        else:
            embeddings = torch.stack([head(spatial) for head in self.heads], dim=1)
        return F.normalize(embeddings, dim=-1), maps

    def forward(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None) -> torch.Tensor:
        """L2-normalised learner embeddings (B, M, D/M)."""
        return self.forward_with_attention(image, meta)[0]

    def embed(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The ensemble embedding (B, D): the learners' normalised embeddings, concatenated."""
        return self(image, meta).flatten(1)
