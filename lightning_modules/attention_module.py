"""LightningModules for trainable attention: AttnVGG and soft attention scoring.

Both expose ``attention_maps`` (the protocol in :mod:`lightning_modules.attention`), so the
attention-map callback draws them, and on data with lesion masks (``--data.load_masks=true``)
they log how much of each map's mass falls on the lesion (``<stage>/lesion_mass[_<map>]``), and
at test time the same score for Grad-CAM on the same images and the same grid as the finest
attention map (``test/gradcam_lesion_mass``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_modules.analysis.gradcam import grad_cam
from lightning_modules.attention import LesionMass
from lightning_modules.classifier import LesionClassifier
from lightning_modules.nets.attn_vgg import AttnVGG
from lightning_modules.nets.soft_attention import SoftAttentionClassifier


def mask_dice_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 - Dice between each attention map (scaled to a peak of 1) and the lesion mask resized to
    the map's grid: AttnMel's lesion-guided regulariser, pulling attention onto the lesion."""
    target = F.interpolate(masks[:, None].float(), size=maps.shape[-2:], mode="area")[:, 0]
    peak = maps.flatten(1).max(dim=1).values.clamp_min(1e-12)
    a = maps / peak[:, None, None]
    inter = (a * target).flatten(1).sum(1)
    return (1 - 2 * inter / (a.flatten(1).sum(1) + target.flatten(1).sum(1)).clamp_min(1e-12)).mean()


class AttentionClassifier(LesionClassifier):
    """Base for networks whose ``forward(image, meta, return_attention=True)`` returns
    ``(logits, {name: (B, h, w) map})``; subclasses list the names in ``attention_names``."""

    def __init__(self, mask_loss_weight: float = 0.0, gradcam_in_test: bool = True, **kwargs: Any):
        """
        Args:
            mask_loss_weight: weight of the Dice regulariser toward lesion masks (AttnMel used
                0.001 / 0.01); 0 turns it off. Needs ``--data.load_masks=true``.
            gradcam_in_test: also score Grad-CAM's lesion mass on the test split (needs
                ``trainer.inference_mode: false``, set in the attention experiment configs).
            **kwargs: :class:`~lightning_modules.classifier.LesionClassifier` arguments.
        """
        super().__init__(**kwargs)
        self.gradcam_mass = LesionMass()
        self._warned_inference = False

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        train = getattr(datamodule, "datasets", {}).get("train")
        if stage == "fit" and self.hparams.mask_loss_weight > 0 and train is not None and not train.with_masks:
            # Without masks the regulariser would silently never apply.
            raise ValueError(f"mask_loss_weight={self.hparams.mask_loss_weight} needs lesion masks, but the "
                             f"{train.dataset} training images have none (or --data.load_masks is false); "
                             "set --model.init_args.mask_loss_weight=0")

    def attention_maps(self, image: torch.Tensor, meta: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(image, meta, return_attention=True)[1]

    def compute_loss(self, batch: dict, stage: str):
        logits, maps = self.net(batch["image"], batch["meta"], return_attention=True)
        loss = self.criterion(logits, batch["label"])
        terms: dict[str, torch.Tensor] = {}
        if "mask" in batch:
            if self.hparams.mask_loss_weight > 0 and stage == "train":
                terms["mask_loss"] = sum(mask_dice_loss(a, batch["mask"]) for a in maps.values()) / len(maps)
                loss = loss + self.hparams.mask_loss_weight * terms["mask_loss"]
            if stage == "test" and self.hparams.gradcam_in_test:
                self._score_gradcam(batch)
        return logits, loss, terms, maps

    def _score_gradcam(self, batch: dict) -> None:
        if torch.is_inference_mode_enabled():
            if not self._warned_inference:
                rank_zero_warn("Grad-CAM needs gradients: set trainer.inference_mode=false to score it")
                self._warned_inference = True
            return
        layer, select = self.net.gradcam_target  # the grid the (finest) attention map lies on
        cams = grad_cam(self.forward, layer, batch["image"], batch["meta"], select=select)
        self.gradcam_mass.update(cams, batch["mask"])

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.any_rank_counted(self.gradcam_mass):
            self.log("test/gradcam_lesion_mass", self.gradcam_mass.compute())
            self.gradcam_mass.reset()


class AttnVGGModule(AttentionClassifier):
    """AttnVGG / AttnMel, trained with focal loss by default (the IPMI 2019 setting). AttnMel
    balanced the classes by oversampling melanoma x4 rather than by class weights: to reproduce it,
    use ``--data.balanced_sampler=true --model.init_args.weighted_loss=false``."""

    attention_names = ("attn1", "attn2")

    def __init__(
        self,
        backbone: str = "vgg16_bn",
        pretrained: bool = False,
        weights_path: Optional[str] = None,
        attention_channels: int = 256,
        normalize_attn: bool = True,
        local_reductions: tuple[int, int] = (8, 16),
        pool_local_stages: Optional[bool] = None,
        dropout: float = 0.0,
        loss: str = "focal",
        **kwargs: Any,
    ):
        """
        Args:
            backbone: any timm model (VGG-16-BN as in the paper); attention sits on its stages
                at ``local_reductions`` (1/8 and 1/16 of the input: pool-3 and pool-4 for VGG).
            normalize_attn: spatial softmax attention (sum of attended features) or sigmoid
                attention (average of attended features).
            loss: ``focal`` (default, gamma 2, class-weighted) or ``ce``.
        """
        self.net_config = dict(
            backbone=backbone, pretrained=pretrained, weights_path=weights_path,
            attention_channels=attention_channels, normalize_attn=normalize_attn,
            local_reductions=tuple(local_reductions), pool_local_stages=pool_local_stages, dropout=dropout,
        )  # fmt: skip
        super().__init__(loss=loss, **kwargs)

    def build_net(self) -> nn.Module:
        return AttnVGG(num_classes=self.hparams.num_classes, **self.net_config)


class SoftAttentionModule(AttentionClassifier):
    """Metadata-guided soft attention over the image grid (dot / general / concat scoring)."""

    attention_names = ("soft",)

    def __init__(
        self,
        backbone: str = "resnet18",
        scoring: str = "concat",
        query: str = "auto",
        query_dim: int = 64,
        attention_dim: int = 128,
        pretrained: bool = False,
        weights_path: Optional[str] = None,
        dropout: float = 0.0,
        feature_stage: int = -1,
        **kwargs: Any,
    ):
        """
        Args:
            scoring: ``dot``, ``general`` or ``concat`` (additive).
            feature_stage: the backbone stage attended over (-1 deepest, -2 twice as fine).
            query: ``metadata`` (an MLP of the metadata vector), ``learned`` (one learned vector,
                for data without metadata), or ``auto`` (metadata when there is any).
        """
        self.net_config = dict(
            backbone=backbone, scoring=scoring, query=query, query_dim=query_dim, attention_dim=attention_dim,
            pretrained=pretrained, weights_path=weights_path, dropout=dropout, feature_stage=feature_stage,
        )  # fmt: skip
        super().__init__(**kwargs)

    def build_net(self) -> nn.Module:
        return SoftAttentionClassifier(num_classes=self.hparams.num_classes, meta_dim=self.hparams.meta_dim,
                                       **self.net_config)
