"""ProtoPNet training: the paper's stages as one schedule, with the push as a callback.

    epochs [0, warmup)     warm-up: backbone frozen; add-on and prototypes at 3e-3
    epochs [warmup, ...)   joint: backbone 1e-4, add-on and prototypes 3e-3, x0.1 every 5 epochs
    push epochs            after the epoch's last batch, ``PrototypePush`` projects every
                           prototype onto its nearest training patch and optimises the last
                           layer alone (convex), before that epoch's validation

The last layer keeps its +1 / -0.5 initialisation during warm-up and joint training, as in the
paper. Checkpoints are selected on ``val/push_auroc``: the validation AUROC of epochs that ended
with a push (0 otherwise), so the tested model's prototypes are real training patches. (The
reference code picked checkpoints on the test set.)
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_modules.classifier import LesionClassifier
from lightning_modules.losses import PROTOPNET_LOSS_WEIGHTS, protopnet_loss
from lightning_modules.nets.protopnet import ProtoPNet


class ProtoPNetModule(LesionClassifier):
    attention_names = ("top_prototype", "predicted_class")

    def __init__(
        self,
        backbone: str = "resnet18",
        prototypes_per_class: int = 10,
        prototype_dim: int = 128,
        pretrained: bool = False,
        weights_path: Optional[str] = None,
        class_specific: bool = True,
        feature_stage: int = -1,
        cluster_weight: float = PROTOPNET_LOSS_WEIGHTS["clst"],
        separation_weight: float = PROTOPNET_LOSS_WEIGHTS["sep"],
        l1_weight: float = PROTOPNET_LOSS_WEIGHTS["l1"],
        warmup_epochs: int = 5,
        warm_lr: float = 3e-3,
        joint_backbone_lr: float = 1e-4,
        joint_lr: float = 3e-3,
        joint_lr_step: int = 5,
        joint_lr_gamma: float = 0.1,
        weight_decay: float = 1e-3,
        monitor: str = "val/push_auroc",
        **kwargs: Any,
    ):
        """
        Args:
            prototypes_per_class, prototype_dim: m = classes x prototypes_per_class prototypes of
                shape (prototype_dim, 1, 1).
            class_specific: prototypes belong to classes (cluster/separation costs, class-specific
                push); ``False`` gives the class-agnostic variant.
            feature_stage: the backbone stage the prototypes live on (-1 deepest).
            cluster_weight, separation_weight, l1_weight: the paper's 0.8, -0.08, 1e-4.
            warmup_epochs, warm_lr, joint_backbone_lr, joint_lr, joint_lr_step, joint_lr_gamma:
                the stage schedule (the paper's values by default).
            weight_decay: on backbone and add-on layers (not on prototypes), as in the paper's code.
        """
        self.net_config = dict(backbone=backbone, prototypes_per_class=prototypes_per_class,
                               prototype_dim=prototype_dim, pretrained=pretrained, weights_path=weights_path,
                               class_specific=class_specific, feature_stage=feature_stage)  # fmt: skip
        super().__init__(monitor=monitor, **kwargs)
        self.cost_weights = {"clst": cluster_weight, "sep": separation_weight, "l1": l1_weight}
        self.last_push_epoch = -1
        self._stage: Optional[str] = None

    def build_net(self) -> nn.Module:
        return ProtoPNet(num_classes=self.hparams.num_classes, **self.net_config)

    def forward(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(image, meta).logits

    def compute_loss(self, batch: dict, stage: str):
        output = self.net(batch["image"], batch["meta"])
        total, terms = protopnet_loss(output, batch["label"], self.net, self.cost_weights,
                                      self.hparams.class_specific, ce_loss=self.criterion)  # fmt: skip
        maps = self.maps_from_output(output) if stage != "train" else None
        return output.logits, total, terms, maps

    def attention_maps(self, image: torch.Tensor, meta: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.maps_from_output(self.net(image, meta))

    def maps_from_output(self, output) -> dict[str, torch.Tensor]:
        """Similarity maps: of the most activated prototype, and the last-layer-weighted sum over
        the prototypes of the predicted class (where the evidence for the prediction lies)."""
        similarity = self.net.distance_to_similarity(output.distances).detach()  # (B, m, H, W)
        top = self.net.distance_to_similarity(output.min_distances).argmax(dim=1)
        rows = torch.arange(similarity.shape[0], device=similarity.device)
        weights = self.net.last_layer.weight[output.logits.argmax(dim=1)].clamp_min(0).detach()  # (B, m)
        return {
            "top_prototype": similarity[rows, top],
            "predicted_class": (weights[:, :, None, None] * similarity).sum(dim=1),
        }

    # -- the stage schedule ----------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        groups = self.net.parameter_groups()
        decay = self.hparams.weight_decay
        return [
            {"params": groups["backbone"], "name": "backbone", "weight_decay": decay},
            {"params": groups["add_on"], "name": "add_on", "weight_decay": decay},
            {"params": groups["prototypes"], "name": "prototypes", "weight_decay": 0.0},
        ]  # the last layer is trained only after pushes (PrototypePush)

    def stage_learning_rates(self, epoch: int) -> tuple[str, dict[str, float]]:
        hp = self.hparams
        if epoch < hp.warmup_epochs:
            return "warm", {"backbone": 0.0, "add_on": hp.warm_lr, "prototypes": hp.warm_lr}
        factor = hp.joint_lr_gamma ** ((epoch - hp.warmup_epochs) // hp.joint_lr_step)
        return "joint", {"backbone": hp.joint_backbone_lr * factor, "add_on": hp.joint_lr * factor,
                         "prototypes": hp.joint_lr * factor}  # fmt: skip

    def on_train_epoch_start(self) -> None:
        stage, rates = self.stage_learning_rates(self.current_epoch)
        # Frozen by requires_grad only: the backbone's BatchNorm layers stay in train mode and keep
        # updating their running statistics during warm-up, as the reference code does.
        for param in self.net.backbone.parameters():
            param.requires_grad_(stage == "joint")
        for param in self.net.last_layer.parameters():
            param.requires_grad_(False)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = rates[group["name"]]
        if stage != self._stage:
            rank_zero_info(f"ProtoPNet: epoch {self.current_epoch} starts the {stage} stage ({rates})")
            self._stage = stage
        self.log("train/stage_joint", float(stage == "joint"), on_epoch=True, on_step=False)

    def configure_optimizers(self) -> Any:
        if self.scheduler_factory is not None:
            raise ValueError("ProtoPNet sets its learning rates per stage; leave `scheduler` unset")
        return self.optimizer_factory(self.parameter_groups())

    # -- checkpoint selection among pushed epochs --------------------------------------------------
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        report = self.epoch_report.get("val")
        if self.trainer.sanity_checking or report is None:
            return
        pushed = self.last_push_epoch == self.current_epoch
        macro = sum(report["auroc_per_class"].values()) / len(report["auroc_per_class"])
        self.log("val/push_auroc", macro if pushed else 0.0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["protopnet_last_push_epoch"] = self.last_push_epoch

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.last_push_epoch = int(checkpoint.get("protopnet_last_push_epoch", -1))
