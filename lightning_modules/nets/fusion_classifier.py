"""Image + metadata classifier with the fusion as a switch: ``none`` | ``concat`` | ``metablock``.

    image -> backbone -> last feature map (B, k, H, W)  (head_features: the backbone's final
             features, after its head convolution where it has one)
      none      : global average pool                                  -> (B, k)
      concat    : [global average pool, metadata]                      -> (B, k + d_meta)
      metablock : MetaBlock(feature map, metadata), then average pool  -> (B, k)
                  (metablock_groups=V: average pool, then MetaBlock on V channel groups, as the
                  official code)
    -> optional reducer (Linear-BN-ReLU-Dropout 0.5, as in the MetaBlock code) -> Linear -> logits
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lightning_modules.nets.backbones import create_backbone, feature_channels
from lightning_modules.nets.metablock import MetaBlock

FUSIONS = ("none", "concat", "metablock")


class FusionClassifier(nn.Module):
    def __init__(
        self,
        num_classes: int,
        meta_dim: int = 0,
        backbone: str = "resnet18",
        fusion: str = "metablock",
        pretrained: bool = False,
        weights_path: Optional[str] = None,
        reducer_dim: Optional[int] = None,
        dropout: float = 0.0,
        metablock_batch_norm: bool = False,
        metablock_groups: Optional[int] = None,
        metablock_group_size: Optional[int] = None,
        head_features: bool = False,
    ):
        """
        Args:
            num_classes, meta_dim: from the data (the module passes them).
            backbone: any timm model name (used with ``features_only=True``).
            fusion: ``none`` (image only), ``concat`` or ``metablock``.
            pretrained: timm's pretrained weights (downloads); ``weights_path``: a local file.
            reducer_dim: width of the optional reducer before the classifier (off by default,
                as in the MetaBlock benchmarks).
            metablock_batch_norm: BatchNorm1d after MetaBlock's linear maps, as in the official code
                (https://github.com/paaatcha/MetaBlock/tree/e283174409f5e5685cb871bbb9e85c26c3a53c65)
                (off: the paper's formula, which also trains better; see ``MetaBlock``).
            metablock_groups: the official code's arrangement: pool first, then gate ``V`` groups of
                consecutive channels (``MetaBlock(groups=V)``); default: gate every channel of the
                feature map before pooling.
            metablock_group_size: the channels per group the configuration expects (the official
                code's reshape ``view(B, V, 32, -1)`` fixes 32); the network refuses to build unless
                the backbone's channels are exactly ``metablock_groups x metablock_group_size``.
            head_features: take the backbone's final features as timm's ``forward_features``
                returns them (after the head convolution: 1,792 channels for EfficientNet-B4, as the
                MetaBlock code's ``extract_features``) instead of its last stage (448 for
                EfficientNet-B4); the same for backbones without a head convolution (ResNets).
        """
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if fusion != "none" and meta_dim < 1:
            raise ValueError(f"fusion={fusion!r} needs metadata, but the data has no metadata features")
        self.fusion = fusion
        self.backbone = create_backbone(backbone, pretrained, weights_path, out_indices=(-1,),
                                        head_features=head_features)
        channels = feature_channels(self.backbone)[-1]
        if fusion == "metablock":
            check_metablock_groups(channels, metablock_groups, metablock_group_size, backbone, head_features)
        self.metablock = MetaBlock(meta_dim, channels, metablock_batch_norm, metablock_groups) \
            if fusion == "metablock" else None
        width = channels + (meta_dim if fusion == "concat" else 0)
        if reducer_dim:
            self.reducer: nn.Module = nn.Sequential(
                nn.Linear(width, reducer_dim), nn.BatchNorm1d(reducer_dim), nn.ReLU(inplace=True), nn.Dropout(0.5)
            )
            width = reducer_dim
        else:
            self.reducer = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def features(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """The fused feature vector fed to the classifier."""
        fmap = self.backbone(image)[-1]
        if self.metablock is not None and self.metablock.groups is None:
            fmap = self.metablock(fmap, meta)
        pooled = fmap.mean(dim=(2, 3))
        if self.metablock is not None and self.metablock.groups is not None:
            pooled = self.metablock(pooled, meta)  # the official arrangement: after pooling
        if self.fusion == "concat":
            pooled = torch.cat([pooled, meta.to(pooled.dtype)], dim=1)
        return self.reducer(pooled)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(image, meta)))


def check_metablock_groups(channels: int, groups: Optional[int], group_size: Optional[int], backbone: str,
                           head_features: bool) -> None:
    """Refuse ``metablock_groups`` (x ``metablock_group_size``) that does not cut the backbone's
    ``channels`` the way the configuration says, with the numbers (a divisor alone is not enough:
    56 groups of EfficientNet-B4's 448 last-stage channels are groups of 8, not the paper's 32)."""
    if groups is None:
        if group_size is not None:
            raise ValueError("metablock_group_size needs metablock_groups (the number of groups)")
        return
    where = f"{backbone}'s " + ("final features (head_features=true)" if head_features else
                                "last stage (head_features=false)")  # fmt: skip
    if groups < 1 or channels % groups:
        raise ValueError(f"metablock_groups={groups} must divide the {channels} feature channels of {where}")
    if group_size is not None and groups * group_size != channels:
        hint = "" if head_features else ("; head_features=true takes the features after the backbone's head "
                                         "convolution, as the official MetaBlock code does")  # fmt: skip
        raise ValueError(f"metablock_groups={groups} x metablock_group_size={group_size} = {groups * group_size} "
                         f"channels, but {where} has {channels} ({groups} groups of {channels // groups}){hint}")
