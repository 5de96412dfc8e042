"""Image + metadata classification: MetaBlock and its baselines (image only, concatenation)."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from lightning_modules.classifier import LesionClassifier
from lightning_modules.nets.fusion_classifier import FusionClassifier


class FusionModule(LesionClassifier):
    def __init__(
        self,
        backbone: str = "resnet18",
        fusion: str = "metablock",
        pretrained: bool = False,
        weights_path: Optional[str] = None,
        reducer_dim: Optional[int] = None,
        dropout: float = 0.0,
        metablock_batch_norm: bool = False,
        **kwargs: Any,
    ):
        """
        Args:
            backbone: any timm model name (used with ``features_only=True``).
            fusion: ``none`` (image only), ``concat`` or ``metablock``.
            pretrained: timm's pretrained weights (downloads); ``weights_path``: a local file.
            reducer_dim: width of the optional reducer before the classifier (off by default,
                as in the MetaBlock benchmarks).
            metablock_batch_norm: BatchNorm1d after MetaBlock's linear maps, as in the official code
                (off: the paper's formula, which also trains better; see ``MetaBlock``).
            **kwargs: :class:`~lightning_modules.classifier.LesionClassifier` arguments.
        """
        self.net_config = dict(
            backbone=backbone, fusion=fusion, pretrained=pretrained, weights_path=weights_path,
            reducer_dim=reducer_dim, dropout=dropout, metablock_batch_norm=metablock_batch_norm,
        )  # fmt: skip
        super().__init__(**kwargs)

    def build_net(self) -> nn.Module:
        return FusionClassifier(num_classes=self.hparams.num_classes, meta_dim=self.hparams.meta_dim, **self.net_config)
