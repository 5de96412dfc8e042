"""Soft attention over the image grid with the three classic scoring functions (Luong et al. 2015):

    E = backbone's last feature map as cells (B, N = H*W, C),  h = the query (B, Q)
    dot      score_n = (P h) . e_n                 (P: Q -> C, bias-free; identity when Q == C)
    general  score_n = h^T W e_n                   (W bias-free: a bias would add the same score to every cell)
    concat   score_n = v^T tanh(W_h h + W_e e_n)   (additive; = v^T tanh(W [h; e_n]))
    a = softmax_n(score),  context = sum_n a_n e_n

Public PyTorch snippets of these scores (e.g. a Korean-language blog post "Image Attention 정리
(feat. Pytorch)" for images) only work when H*W equals the hidden size (dot,
general) or flatten the whole grid into one linear layer (concat), tying the weights to one
image size; these score every cell with the same weights, so any grid works. Parameters get
explicit initialisations.

The query is the metadata embedding (metadata-guided attention: the patient record says where
to look) or, for data without metadata, a learned query vector.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.nets.backbones import create_backbone, feature_channels

SCORINGS = ("dot", "general", "concat")


class DotScore(nn.Module):
    def __init__(self, query_dim: int, cell_dim: int):
        super().__init__()
        self.project = nn.Identity() if query_dim == cell_dim else nn.Linear(query_dim, cell_dim, bias=False)
        if isinstance(self.project, nn.Linear):
            nn.init.xavier_uniform_(self.project.weight)
        self.scale = cell_dim ** -0.5  # keeps the softmax from saturating as C grows

    def forward(self, query: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bc,bnc->bn", self.project(query), cells) * self.scale


class GeneralScore(nn.Module):
    def __init__(self, query_dim: int, cell_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(query_dim, cell_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, query: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bq,qc,bnc->bn", query, self.weight, cells)


class ConcatScore(nn.Module):
    def __init__(self, query_dim: int, cell_dim: int, attention_dim: int = 128):
        super().__init__()
        # W [h; e] split into W_h h + W_e e: the query part is computed once, not once per cell.
        self.query_proj = nn.Linear(query_dim, attention_dim, bias=True)
        self.cell_proj = nn.Linear(cell_dim, attention_dim, bias=False)
        self.v = nn.Linear(attention_dim, 1, bias=False)
        for layer in (self.query_proj, self.cell_proj, self.v):
            nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(self.query_proj.bias)

    def forward(self, query: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.query_proj(query)[:, None, :] + self.cell_proj(cells))
        return self.v(hidden)[..., 0]


def make_score(kind: str, query_dim: int, cell_dim: int, attention_dim: int = 128) -> nn.Module:
    if kind == "dot":
        return DotScore(query_dim, cell_dim)
    if kind == "general":
        return GeneralScore(query_dim, cell_dim)
    if kind == "concat":
        return ConcatScore(query_dim, cell_dim, attention_dim)
    raise ValueError(f"scoring must be one of {SCORINGS}, got {kind!r}")


class SoftAttention(nn.Module):
    """``(context (B, C), attention (B, H, W))`` for a query and a feature map."""

    def __init__(self, scoring: str, query_dim: int, cell_dim: int, attention_dim: int = 128):
        super().__init__()
        self.score = make_score(scoring, query_dim, cell_dim, attention_dim)

    def forward(self, query: torch.Tensor, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = fmap.shape
        cells = fmap.flatten(2).transpose(1, 2)  # (B, N, C)
        attention = F.softmax(self.score(query, cells), dim=1)
        context = torch.einsum("bn,bnc->bc", attention, cells)
        return context, attention.view(b, h, w)


class SoftAttentionClassifier(nn.Module):
    """backbone -> grid; query from metadata (or learned) -> soft attention -> [context, query]
    -> classifier."""

    def __init__(
        self,
        num_classes: int,
        meta_dim: int = 0,
        backbone: str = "resnet18",
        scoring: str = "concat",
        query: str = "auto",
        query_dim: int = 64,
        attention_dim: int = 128,
        pretrained: bool = False,
        weights_path: Optional[str] = None,
        dropout: float = 0.0,
        feature_stage: int = -1,
    ):
        """
        Args:
            scoring: ``dot``, ``general`` or ``concat`` (additive).
            query: ``metadata`` (an MLP of the metadata vector), ``learned`` (one learned vector,
                for data without metadata), or ``auto`` (metadata when there is any).
            feature_stage: which backbone stage is the attention grid (-1: the deepest; -2 has
                twice the resolution, useful for small inputs).
        """
        super().__init__()
        if query == "auto":
            query = "metadata" if meta_dim > 0 else "learned"
        if query == "metadata" and meta_dim < 1:
            raise ValueError("query='metadata' needs metadata features; use query='learned'")
        if query not in ("metadata", "learned"):
            raise ValueError(f"query must be 'metadata', 'learned' or 'auto', got {query!r}")
        self.query_kind = query
        self.attention_names = ("soft",)
        self.backbone = create_backbone(backbone, pretrained, weights_path, out_indices=(feature_stage,))
        channels = feature_channels(self.backbone)[-1]
        if query == "metadata":
            self.query = nn.Sequential(nn.Linear(meta_dim, query_dim), nn.ReLU(inplace=True),
                                       nn.Linear(query_dim, query_dim))
        else:
            self.learned_query = nn.Parameter(torch.randn(query_dim) * query_dim ** -0.5)
        self.attention = SoftAttention(scoring, query_dim, channels, attention_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels + (query_dim if query == "metadata" else 0), num_classes)

    def make_query(self, image: torch.Tensor, meta: Optional[torch.Tensor]) -> torch.Tensor:
        if self.query_kind == "metadata":
            return self.query(meta.to(image.dtype))
        return self.learned_query.expand(image.shape[0], -1)

    @property
    def gradcam_target(self) -> tuple[nn.Module, Callable]:
        """Grad-CAM's layer and output selector: the attended grid (the backbone's one stage)."""
        return self.backbone, lambda out: out[-1]

    def forward_with_attention(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None):
        """``(logits (B, K), {"soft": (B, H, W)})``."""
        fmap = self.backbone(image)[-1]
        query = self.make_query(image, meta)
        context, attention = self.attention(query, fmap)
        features = torch.cat([context, query], dim=1) if self.query_kind == "metadata" else context
        return self.classifier(self.dropout(features)), {"soft": attention}

    def forward(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_with_attention(image, meta)[0]
