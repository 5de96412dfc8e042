"""ABE-M training and evaluation (metric learning), in the same comparison as the classifiers.

- train: per-learner contrastive loss over the pairs of a P x K batch (``--data.pk_batches``),
  plus ``lambda_div`` x the divergence loss between the learners' embeddings of the same image;
  each term logged.
- validation/test: Recall@K (K = 1, 2, 4, 8) for the ensemble and each learner, every image
  querying the rest of its split minus its own patient/lesion group; checkpoints on
  ``val/recall@1``.
- test: k-nearest-neighbour classification against the training images' embeddings, scored with
  the same AUROC / balanced accuracy / confusion matrix as the classifiers (metrics.json,
  predictions.csv).
- the learners' attention masks are exposed through ``attention_maps`` (logged by the attention
  callback and scored for lesion mass on data with masks).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from lightning_modules.callbacks.test_results import gather_unique_tensors
from lightning_modules.classifier import LesionClassifier
from lightning_modules.losses import contrastive_loss, divergence_loss
from lightning_modules.nets.abe import ABE
from lightning_modules.retrieval import knn_probabilities, recall_at_k

RECALL_KS = (1, 2, 4, 8)


class ABEModule(LesionClassifier):
    def __init__(
        self,
        backbone: str = "resnet18",
        num_learners: int = 4,
        embedding_dim: int = 512,
        split_stage: int = -2,
        ensemble: str = "attention",
        pretrained: bool = False,
        weights_path: Optional[str] = None,
        margin: float = 1.0,
        lambda_div: float = 1.0,
        div_margin: float = 1.0,
        knn_k: int = 10,
        monitor: str = "val/recall@1",
        **kwargs: Any,
    ):
        """
        Args:
            num_learners: M; ``embedding_dim / M`` dimensions per learner.
            ensemble: ``attention`` (ABE-M) or ``heads`` (the M-heads baseline).
            margin: contrastive margin on squared distances; ``div_margin``: divergence margin.
            lambda_div: weight of the divergence loss (0: ABE-M without divergence).
            knn_k: neighbours voting in the k-NN classification at test time.
        """
        self.net_config = dict(backbone=backbone, num_learners=num_learners, embedding_dim=embedding_dim,
                               split_stage=split_stage, ensemble=ensemble, pretrained=pretrained,
                               weights_path=weights_path)  # fmt: skip
        self.attention_names = tuple(f"learner{m}" for m in range(num_learners)) if ensemble == "attention" else ()
        super().__init__(monitor=monitor, **kwargs)
        self._collected: dict[str, list[torch.Tensor]] = {}
        self._bank: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def build_net(self) -> nn.Module:
        return ABE(**self.net_config)

    def forward(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The ensemble embedding (B, D): the learners' normalised embeddings, concatenated."""
        return self.net(image, meta).flatten(1)

    def class_probabilities(self, image: torch.Tensor, meta: torch.Tensor) -> None:
        return None  # classes come from neighbours in the training bank, built only at test time

    def attention_maps(self, image: torch.Tensor, meta: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(image, meta, return_attention=True)[1]

    # -- training ------------------------------------------------------------------------------
    def metric_losses(self, learners: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        hp = self.hparams
        contrastive = sum(contrastive_loss(learners[:, m], labels, hp.margin) for m in range(learners.shape[1]))
        divergence = divergence_loss(learners, hp.div_margin)
        return {"contrastive": contrastive, "divergence": divergence,
                "loss": contrastive + hp.lambda_div * divergence}  # fmt: skip

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        learners, maps = self.net(batch["image"], batch["meta"], return_attention=True)
        losses = self.metric_losses(learners, batch["label"])
        n = batch["label"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=name == "loss", on_epoch=True, prog_bar=name == "loss",
                     batch_size=n)
        self.update_lesion_mass("train", maps, batch)
        return losses["loss"]

    # -- evaluation ----------------------------------------------------------------------------
    def _collect(self, learners: torch.Tensor, batch: dict) -> None:
        self._collected.setdefault("learners", []).append(learners.detach())
        self._collected.setdefault("label", []).append(batch["label"])
        self._collected.setdefault("index", []).append(batch["index"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        learners, maps = self.net(batch["image"], batch["meta"], return_attention=True)
        losses = self.metric_losses(learners, batch["label"])
        self.log("val/loss", losses["loss"], on_epoch=True, batch_size=batch["label"].shape[0], sync_dist=True)
        self._collect(learners, batch)
        self.update_lesion_mass("val", maps, batch)

    def _retrieval(self, stage: str) -> None:
        chunks, self._collected = self._collected, {}
        if not chunks:
            return
        gathered = gather_unique_tensors(self, chunks)  # every rank's images, DDP's padded repeats dropped
        learners, labels, index = gathered["learners"], gathered["label"], gathered["index"]
        groups = self.trainer.datamodule.group_ids(stage).to(index.device)[index] \
            if self.trainer.datamodule is not None and hasattr(self.trainer.datamodule, "group_ids") else None
        if self.trainer.sanity_checking:
            return
        ensemble = recall_at_k(learners.flatten(1), labels, groups, RECALL_KS)
        for k, value in ensemble.items():
            self.log(f"{stage}/recall@{k}", value, prog_bar=k == 1 and stage == "val")
        for m in range(learners.shape[1]):
            self.log(f"{stage}/recall@1_learner{m}", recall_at_k(learners[:, m], labels, groups, (1,))[1])

    def on_validation_epoch_end(self) -> None:  # no classification report: ABE-M does not classify here
        self._retrieval("val")
        self.log_lesion_mass("val")

    # -- test: k-NN classification against the training images ------------------------------
    @torch.no_grad()
    def _embed_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings, labels = [], []
        for batch in self.trainer.datamodule.eval_dataloader("train"):
            embeddings.append(self(batch["image"].to(self.device), batch["meta"].to(self.device)))
            labels.append(batch["label"].to(self.device))
        return torch.cat(embeddings), torch.cat(labels)

    def on_test_epoch_start(self) -> None:
        self._bank = self._embed_bank()

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        learners, maps = self.net(batch["image"], batch["meta"], return_attention=True)
        self.update_lesion_mass("test", maps, batch)
        bank, bank_labels = self._bank
        probs = knn_probabilities(learners.flatten(1), bank, bank_labels, self.hparams.num_classes,
                                  self.hparams.knn_k)  # fmt: skip
        self.test_metrics.update(probs, batch["label"])
        self.test_details.update(probs, batch["label"])
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True, batch_size=batch["label"].shape[0])
        self._collect(learners, batch)
        return {"probs": probs, "index": batch["index"], "label": batch["label"]}

    def on_test_epoch_end(self) -> None:
        self._retrieval("test")
        self._report("test")
        self.log_lesion_mass("test")
        self._bank = None

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"embeddings": self(batch["image"], batch["meta"]), "index": batch["index"]}
