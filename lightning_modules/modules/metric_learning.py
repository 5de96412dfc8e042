"""Metric learning (ABE-M), in the same comparison as the classifiers.

The network is an :class:`~lightning_modules.contracts.EmbeddingNet` whose forward pass gives M
learner embeddings ``(B, M, D/M)`` (M = 1 for a plain embedding network), L2-normalised.

- train: per-learner contrastive loss over the pairs of a P x K batch (``--data.pk_batches``),
  plus ``lambda_div`` x the divergence loss between the learners' embeddings of the same image;
  each term logged.
- validation/test: Recall@K (K = 1, 2, 4, 8) for the ensemble and each learner, every image
  querying the rest of its split minus its own patient/lesion group; checkpoints on
  ``val/recall@1``.
- test: k-nearest-neighbour classification against the training images' embeddings, scored with
  the same AUROC / balanced accuracy / confusion matrix as the classifiers (metrics.json,
  predictions.csv).
- the learners' attention masks (an :class:`~lightning_modules.contracts.AttentionNet`) are drawn
  by the attention callback and scored for lesion mass on data with masks.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from datamodules.arguments import check_choice, check_int, check_number
from lightning_modules.metrics.gather import gather_unique_tensors
from lightning_modules.contracts import EmbeddingNet, EvaluationData, evaluation_data
from lightning_modules.lightning_compat import attached_trainer
from lightning_modules.metrics.retrieval import knn_probabilities, recall_at_k
from lightning_modules.modules.base import DermModule
from lightning_modules.modules.scores import ClassificationScores
from lightning_modules.training.losses import contrastive_loss, divergence_loss

RECALL_KS = (1, 2, 4, 8)


class MetricLearningModule(DermModule):
    def __init__(
        self,
        margin: float = 1.0,
        lambda_div: float = 1.0,
        div_margin: float = 1.0,
        knn_k: int = 10,
        div_reduction: str = "mean",
        monitor: str = "val/recall@1",
        **kwargs: Any,
    ):
        """
        Args:
            margin: contrastive margin on squared distances; ``div_margin``: divergence margin.
            lambda_div: weight of the divergence loss (0: ABE-M without divergence).
            knn_k: neighbours voting in the k-NN classification at test time.
            div_reduction: ``mean`` over images and learner pairs (``lambda_div`` independent of the
                batch size and M) or ``sum`` (the paper's form, for its ``lambda_div``).
            **kwargs: :class:`~lightning_modules.modules.base.DermModule` arguments; ``net`` is an
                embedding network (``lightning_modules.nets.abe.ABE``).
        """
        super().__init__(monitor=monitor, **kwargs)
        check_number("--model.init_args.margin", margin, above=0)
        check_number("--model.init_args.div_margin", div_margin, minimum=0)
        check_number("--model.init_args.lambda_div", lambda_div, minimum=0)
        check_int("--model.init_args.knn_k", knn_k, minimum=1)
        check_choice("--model.init_args.div_reduction", div_reduction, ("mean", "sum"))
        if not isinstance(self.net, EmbeddingNet):
            raise TypeError(f"MetricLearningModule needs an embedding network (embed), got {type(self.net).__name__}")
        self.scores = ClassificationScores(self.hparams.num_classes, self.class_names, stages=("test",))
        self._collected: dict[str, list[torch.Tensor]] = {}
        self._bank: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def forward(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The ensemble embedding (B, D)."""
        return self.net.embed(image, meta)

    def learners(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(learner embeddings (B, M, D/M), attention maps)`` of a batch."""
        if self.attention_names:
            return self.net.forward_with_attention(batch["image"], batch["meta"])
        return self.net(batch["image"], batch["meta"]), {}

    def data(self) -> EvaluationData:
        data = evaluation_data(attached_trainer(self))
        if data is None:
            raise RuntimeError("metric learning evaluates against the training images: use a LesionDataModule")
        return data

    # -- training ------------------------------------------------------------------------------
    def metric_losses(self, learners: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        hp = self.hparams
        contrastive = sum(contrastive_loss(learners[:, m], labels, hp.margin) for m in range(learners.shape[1]))
        divergence = divergence_loss(learners, hp.div_margin, hp.div_reduction)
        return {"contrastive": contrastive, "divergence": divergence,
                "loss": contrastive + hp.lambda_div * divergence}  # fmt: skip

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        learners, maps = self.learners(batch)
        losses = self.metric_losses(learners, batch["label"])
        self.watch_training_loss(losses["loss"], {k: v for k, v in losses.items() if k != "loss"})
        n = batch["label"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=name == "loss", on_epoch=True, prog_bar=name == "loss",
                     batch_size=n)
        self.update_lesion_mass("train", maps, batch)
        return losses["loss"]

    def on_train_epoch_end(self) -> None:
        self.log_lesion_mass("train")

    # -- evaluation ----------------------------------------------------------------------------
    def _collect(self, learners: torch.Tensor, batch: dict) -> None:
        self._collected.setdefault("learners", []).append(learners.detach())
        self._collected.setdefault("label", []).append(batch["label"])
        self._collected.setdefault("index", []).append(batch["index"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        learners, maps = self.learners(batch)
        losses = self.metric_losses(learners, batch["label"])
        self.watch_outputs("val", batch_idx, {"embeddings": learners, "loss": losses["loss"]})
        self.log("val/loss", losses["loss"], on_epoch=True, batch_size=batch["label"].shape[0], sync_dist=True)
        self._collect(learners, batch)
        self.update_lesion_mass("val", maps, batch)

    def _retrieval(self, stage: str) -> None:
        chunks, self._collected = self._collected, {}
        if not chunks:
            return
        gathered = gather_unique_tensors(self, chunks)  # every rank's images, DDP's padded repeats dropped
        learners, labels, index = gathered["learners"], gathered["label"], gathered["index"]
        groups = self.data().group_ids(stage).to(index.device)[index]
        if self.trainer.sanity_checking:
            return
        split = f"the {stage} split"
        ensemble = recall_at_k(learners.flatten(1), labels, groups, RECALL_KS, name=split)
        for k, value in ensemble.items():
            self.log(f"{stage}/recall@{k}", value, prog_bar=k == 1 and stage == "val")
        for m in range(learners.shape[1]):
            self.log(f"{stage}/recall@1_learner{m}", recall_at_k(learners[:, m], labels, groups, (1,), name=split)[1])

    def on_validation_epoch_end(self) -> None:  # no classification report: classes come from k-NN at test
        self.check_outputs("val")
        self._retrieval("val")
        self.log_lesion_mass("val")

    # -- test: k-NN classification against the training images ------------------------------
    @torch.no_grad()
    def _embed_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings, labels = [], []
        for batch in self.data().eval_dataloader("train"):
            embeddings.append(self(batch["image"].to(self.device), batch["meta"].to(self.device)))
            labels.append(batch["label"].to(self.device))
        return torch.cat(embeddings), torch.cat(labels)

    def on_test_epoch_start(self) -> None:
        self._bank = self._embed_bank()

    def knn(self, learners: torch.Tensor) -> torch.Tensor:
        """Class probabilities of the images whose learner embeddings are ``learners``: k-NN votes
        of the training images (the bank of this test)."""
        if self._bank is None:  # scored outside the test loop's epoch
            self._bank = self._embed_bank()
        bank, bank_labels = self._bank
        return knn_probabilities(learners.flatten(1), bank, bank_labels, self.hparams.num_classes, self.hparams.knn_k)

    def test_probabilities(self, batch: dict) -> torch.Tensor:
        return self.knn(self.learners(batch)[0])

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        learners, maps = self.learners(batch)
        self.update_lesion_mass("test", maps, batch)
        probs = self.knn(learners)
        self.watch_outputs("test", batch_idx, {"embeddings": learners, "probabilities": probs})
        self.scores.update("test", probs, batch["label"])
        self.log_dict(self.scores.scalars_of("test"), on_step=False, on_epoch=True, batch_size=batch["label"].shape[0])
        self._collect(learners, batch)
        return {"probs": probs, "index": batch["index"], "label": batch["label"]}

    def on_test_epoch_end(self) -> None:
        self.check_outputs("test")
        self._retrieval("test")
        self.report("test", self.scores)
        self.log_lesion_mass("test")
        self._bank = None

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"embeddings": self(batch["image"], batch["meta"]), "index": batch["index"]}
