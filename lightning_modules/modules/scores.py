"""The scoring machinery every module shares, written once.

- :class:`ClassificationScores`: one torchmetrics ``MetricCollection`` per stage (macro
  one-vs-rest AUROC over the classes that can be scored, balanced accuracy = macro recall,
  accuracy), logged as metric objects; for binary tasks also ISIC 2024's partial AUC above 80 %
  TPR in the evaluation stages (``<stage>/pauc_tpr80``, :meth:`ClassificationScores.partial_auc`); and
  for evaluation stages the per-class AUROC, confusion matrix and (test) ROC curves computed at
  epoch end into an :class:`~lightning_modules.contracts.EvaluationReport`.
- :class:`LesionMassScores`: for networks with attention, on data with lesion masks, the share of
  each map's mass on the lesion per stage (``<stage>/lesion_mass_<map>``, mean ``lesion_mass``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassRecall,
    MulticlassROC,
)

from lightning_modules.contracts import EvaluationReport
from lightning_modules.metrics.auroc import ScorableAUROC
from lightning_modules.metrics.lesion_mass import LesionMass
from lightning_modules.metrics.partial_auc import PartialAUROC

STAGES = ("train", "val", "test")


class ClassificationScores(nn.Module):
    def __init__(self, num_classes: int, class_names: Sequence[str], stages: Sequence[str] = STAGES):
        super().__init__()
        self.class_names = list(class_names)
        # ModuleDict keys may not shadow nn.Module attributes ("train"), hence the suffix.
        self.scalars = nn.ModuleDict({
            f"{stage}_scores": MetricCollection(
                {
                    "auroc": ScorableAUROC(num_classes, average="macro", class_names=class_names),
                    "bacc": MulticlassRecall(num_classes, average="macro"),
                    "acc": MulticlassAccuracy(num_classes, average="micro"),
                },
                prefix=f"{stage}/",
            )
            for stage in stages
        })  # fmt: skip
        # Not scalars: computed at epoch end into the stage's report (figures, metrics.json).
        self.details = nn.ModuleDict()
        for stage in stages:
            if stage == "train":
                continue
            details = MetricCollection({"auroc_per_class": ScorableAUROC(num_classes, average=None,
                                                                         class_names=class_names),
                                        "confusion_matrix": MulticlassConfusionMatrix(num_classes)})  # fmt: skip
            if stage == "test":
                details.add_metrics({"roc": MulticlassROC(num_classes)})
            self.details[f"{stage}_details"] = details
        # Separate from the collections above (their compute groups and what they log stay as they are).
        self.pauc = nn.ModuleDict({stage: PartialAUROC() for stage in stages if stage != "train" and num_classes == 2})

    def partial_auc(self, stage: str) -> PartialAUROC | None:
        """The stage's partial AUC above 80 % TPR (binary tasks, evaluation stages), else ``None``."""
        return self.pauc[stage] if stage in self.pauc else None

    def scalars_of(self, stage: str) -> MetricCollection:
        return self.scalars[f"{stage}_scores"]

    def update(self, stage: str, probs: torch.Tensor, labels: torch.Tensor) -> None:
        self.scalars_of(stage).update(probs, labels)
        if stage in self.pauc:
            self.pauc[stage].update(probs, labels)
        if f"{stage}_details" in self.details:
            self.details[f"{stage}_details"].update(probs, labels)

    def report(self, stage: str, discard: bool = False) -> EvaluationReport | None:
        """The stage's epoch-end report (``None`` when ``discard``, e.g. in the sanity check);
        the detail metrics are reset either way."""
        details = self.details[f"{stage}_details"]
        if discard:
            details.reset()
            return None
        values = details.compute()
        details.reset()
        roc = None
        if "roc" in values:
            fpr, tpr, _ = values["roc"]
            roc = [(f.cpu().numpy(), t.cpu().numpy()) for f, t in zip(fpr, tpr)]
        return EvaluationReport(
            auroc_per_class={name: float(v) for name, v in zip(self.class_names, values["auroc_per_class"])},
            confusion_matrix=values["confusion_matrix"].cpu().long().tolist(),
            roc=roc,
        )


class LesionMassScores(nn.Module):
    def __init__(self, attention_names: Sequence[str], stages: Sequence[str] = STAGES):
        super().__init__()
        self.attention_names = tuple(attention_names)
        self.metrics = nn.ModuleDict({f"{stage}_{name}": LesionMass() for stage in stages for name in self.attention_names})

    def update(self, stage: str, maps: dict[str, torch.Tensor], masks: torch.Tensor) -> None:
        for name, attention in maps.items():
            self.metrics[f"{stage}_{name}"].update(attention.detach(), masks)

    def compute(self, stage: str, any_rank_counted: Callable[[LesionMass], bool]) -> dict[str, torch.Tensor]:
        """``{"lesion_mass_<map>": ..., "lesion_mass": mean}`` for the stage, then reset; empty when
        no process scored an image. ``any_rank_counted`` decides that across processes (a
        collective: ``compute()`` syncs, so all processes call it or none)."""
        metrics = [self.metrics[f"{stage}_{name}"] for name in self.attention_names]
        if not metrics or not any_rank_counted(metrics[0]):
            return {}
        values = [metric.compute() for metric in metrics]
        for metric in metrics:
            metric.reset()
        out = {f"lesion_mass_{name}": value for name, value in zip(self.attention_names, values)}
        out["lesion_mass"] = torch.stack(values).mean()
        return out
