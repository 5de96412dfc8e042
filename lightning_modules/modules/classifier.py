"""The LightningModule for lesion classification, for any network that maps ``(image, meta)``
to logits.

One module serves MetaBlock and its baselines, AttnVGG, soft attention and any new classifier
network: what the network offers (:mod:`lightning_modules.contracts`) decides the rest.

- every network: class-weighted cross-entropy or focal loss; one ``MetricCollection`` per stage
  (macro AUROC, balanced accuracy, accuracy; binary tasks also ``val/pauc_tpr80``, ISIC 2024's
  metric, a possible ``monitor``); per-class AUROC, confusion matrix and ROC curves at
  epoch end (``evaluation_report``); class probabilities for prediction.
- an :class:`~lightning_modules.contracts.AttentionNet`: its maps are logged by the attention
  callback and, on data with lesion masks, scored for lesion mass (``<stage>/lesion_mass[_<map>]``);
  ``mask_loss_weight`` adds AttnMel's Dice regulariser toward the masks.
- a :class:`~lightning_modules.contracts.GradCamNet`: at test time, Grad-CAM on the same grid is
  scored the same way (``test/gradcam_lesion_mass``; needs ``trainer.inference_mode: false``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.arguments import check_choice, check_number
from lightning_modules.analysis.gradcam import grad_cam
from lightning_modules.contracts import AttentionNet, GradCamNet, StepResult, evaluation_data
from lightning_modules.lightning_compat import attached_trainer
from lightning_modules.metrics.lesion_mass import LesionMass
from lightning_modules.modules.base import DermModule
from lightning_modules.modules.scores import ClassificationScores
from lightning_modules.training.losses import classification_loss


def mask_dice_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 - Dice between each attention map (scaled to a peak of 1) and the lesion mask resized to
    the map's grid: AttnMel's lesion-guided regulariser, pulling attention onto the lesion."""
    target = F.interpolate(masks[:, None].float(), size=maps.shape[-2:], mode="area")[:, 0]
    peak = maps.flatten(1).max(dim=1).values.clamp_min(1e-12)
    a = maps / peak[:, None, None]
    inter = (a * target).flatten(1).sum(1)
    return (1 - 2 * inter / (a.flatten(1).sum(1) + target.flatten(1).sum(1)).clamp_min(1e-12)).mean()


class LesionClassifier(DermModule):
    def __init__(
        self,
        loss: str = "ce",
        focal_gamma: float = 2.0,
        weighted_loss: bool = True,
        mask_loss_weight: float = 0.0,
        gradcam_in_test: bool = True,
        **kwargs: Any,
    ):
        """
        Args:
            loss: ``ce`` (cross-entropy) or ``focal`` (AttnMel's, gamma ``focal_gamma``);
                ``weighted_loss`` applies the training split's inverse class frequencies.
            mask_loss_weight: weight of the Dice regulariser toward lesion masks (AttnMel used
                0.001 / 0.01) for networks with attention; 0 turns it off. Needs lesion masks
                (``--data.load_masks=true``).
            gradcam_in_test: score Grad-CAM's lesion mass on the test split for networks that
                name a Grad-CAM target (needs ``trainer.inference_mode: false``).
            **kwargs: :class:`~lightning_modules.modules.base.DermModule` arguments (``net``, the
                data's ``num_classes`` ..., ``monitor``, ``optimizer``, ``scheduler``).
        """
        super().__init__(**kwargs)
        check_choice("--model.init_args.loss", loss, ("ce", "focal"))
        check_number("--model.init_args.focal_gamma", focal_gamma, minimum=0)
        check_number("--model.init_args.mask_loss_weight", mask_loss_weight, minimum=0)
        hp = self.hparams
        self.criterion = classification_loss(loss, hp.class_weights if weighted_loss else None, focal_gamma)
        if mask_loss_weight > 0 and not self.attention_names:
            raise ValueError(f"mask_loss_weight={mask_loss_weight} needs a network with attention maps; "
                             f"{type(self.net).__name__} has none")
        self.scores = ClassificationScores(hp.num_classes, self.class_names)
        self.gradcam_mass = LesionMass()
        self._warned_inference = False

    def setup(self, stage: str) -> None:
        data = evaluation_data(attached_trainer(self))
        if stage == "fit" and self.hparams.mask_loss_weight > 0 and data is not None and not data.describe().has_masks:
            # Without masks the regulariser would silently never apply.
            raise ValueError(f"mask_loss_weight={self.hparams.mask_loss_weight} needs lesion masks, but the "
                             f"{data.describe().dataset} training images have none (or --data.load_masks is false); "
                             "set --model.init_args.mask_loss_weight=0")

    # -- the network ---------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """Logits (B, K)."""
        return self.net(image, meta)

    def class_probabilities(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """``softmax(logits / temperature)``: calibrated when the checkpoint holds a temperature."""
        return (self(image, meta).float() / self.temperature).softmax(dim=1)

    def test_probabilities(self, batch: dict) -> torch.Tensor:
        """What the test step scores: ``softmax(logits)``, without the temperature."""
        return self(batch["image"], batch["meta"]).float().softmax(dim=1)

    # -- steps ---------------------------------------------------------------------------------
    def step(self, batch: dict, stage: str) -> StepResult:
        """Loss, probabilities, extra loss terms and attention maps of one batch. Subclasses
        whose loss has more terms (ProtoPNet's costs) override this."""
        maps: Optional[dict[str, torch.Tensor]] = None
        if self.attention_names:
            logits, maps = self.net.forward_with_attention(batch["image"], batch["meta"])
        else:
            logits = self(batch["image"], batch["meta"])
        loss = self.criterion(logits, batch["label"])
        terms: dict[str, torch.Tensor] = {}
        if maps is not None and "mask" in batch:
            if self.hparams.mask_loss_weight > 0 and stage == "train":
                terms["mask_loss"] = sum(mask_dice_loss(a, batch["mask"]) for a in maps.values()) / len(maps)
                loss = loss + self.hparams.mask_loss_weight * terms["mask_loss"]
            if stage == "test" and self.hparams.gradcam_in_test and isinstance(self.net, GradCamNet):
                self._score_gradcam(batch)
        return StepResult(loss=loss, probs=logits.detach().float().softmax(dim=1), terms=terms, maps=maps)

    def _evaluate(self, batch: dict, stage: str, batch_idx: int = 0) -> StepResult:
        result = self.step(batch, stage)
        if stage == "train":
            self.watch_training_loss(result.loss, result.terms)
        else:
            self.watch_outputs(stage, batch_idx, {"probabilities": result.probs, "loss": result.loss})
        self.update_lesion_mass(stage, result.maps, batch)
        n = batch["label"].shape[0]
        sync = stage != "train"
        self.log(f"{stage}/loss", result.loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=n, sync_dist=sync)
        for name, value in result.terms.items():
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=sync)
        if not self.trainer.sanity_checking:  # a couple of batches: too few to score every class
            self.scores.update(stage, result.probs, batch["label"])
            self.log_dict(self.scores.scalars_of(stage), on_step=False, on_epoch=True, prog_bar=stage == "val",
                          batch_size=n)
            if (pauc := self.scores.partial_auc(stage)) is not None:
                self.log(f"{stage}/pauc_tpr80", pauc, on_step=False, on_epoch=True, batch_size=n)
        return result

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "train", batch_idx).loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        result = self._evaluate(batch, "test", batch_idx)
        return {"probs": result.probs, "index": batch["index"], "label": batch["label"]}

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"probs": self.class_probabilities(batch["image"], batch["meta"]), "index": batch["index"]}

    # -- epoch ends: reports and lesion mass -----------------------------------------------------
    def on_train_epoch_end(self) -> None:
        self.log_lesion_mass("train")

    def on_validation_epoch_end(self) -> None:
        self.check_outputs("val")  # before any score is computed from them, and before the checkpoint
        self.report("val", self.scores)
        self.log_lesion_mass("val")

    def on_test_epoch_end(self) -> None:
        self.check_outputs("test")
        self.report("test", self.scores)
        self.log_lesion_mass("test")
        if self.any_rank_counted(self.gradcam_mass):
            self.log("test/gradcam_lesion_mass", self.gradcam_mass.compute())
            self.gradcam_mass.reset()

    def _score_gradcam(self, batch: dict) -> None:
        if torch.is_inference_mode_enabled():
            if not self._warned_inference:
                rank_zero_warn("Grad-CAM needs gradients: set trainer.inference_mode=false to score it")
                self._warned_inference = True
            return
        layer, select = self.net.gradcam_target  # the grid the (finest) attention map lies on
        cams = grad_cam(self.forward, layer, batch["image"], batch["meta"], select=select)
        self.gradcam_mass.update(cams, batch["mask"])
