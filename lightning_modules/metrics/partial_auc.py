"""ISIC 2024's challenge metric as a torchmetrics ``Metric``: the partial AUC above 80 % TPR.

Logged as ``<stage>/pauc_tpr80`` for binary tasks, so ``--model.init_args.monitor=val/pauc_tpr80``
selects checkpoints the way the challenge ranks them (higher is better; in [0, 0.2], random
ranking about 0.02). The value is ``lightning_modules.evaluation.challenge.pauc_above_tpr`` of the
positive class's probability over every image of the epoch (all processes).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lightning_modules.evaluation.challenge import MIN_TPR, pauc_above_tpr


class PartialAUROC(Metric):
    """Partial AUC above ``min_tpr`` of class ``positive`` (binary readers list the benign class
    first, so 1 is the malignant one); NaN when the images seen lack either class."""

    full_state_update = False

    def __init__(self, min_tpr: float = MIN_TPR, positive: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.min_tpr, self.positive = float(min_tpr), int(positive)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """``probs`` (N, K) class probabilities, ``target`` (N,) class indices."""
        self.scores.append(probs[:, self.positive].detach().double())
        self.target.append(target.detach().long())

    def compute(self) -> torch.Tensor:
        scores = dim_zero_cat(self.scores).cpu().numpy() if self.scores else []
        target = dim_zero_cat(self.target).cpu().numpy() == self.positive if self.target else []
        value = pauc_above_tpr(target, scores, self.min_tpr) if len(target) else None
        return torch.tensor(float("nan") if value is None else value, dtype=torch.float32)
