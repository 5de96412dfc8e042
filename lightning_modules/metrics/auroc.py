"""One-vs-rest AUROC that says when a class cannot be scored.

A class with no positive (or no negative) example among the evaluated images has no ROC curve;
torchmetrics reports it as 0.0 (with a warning about "meaningless" values), which pulls the
macro average down (a limited test batch, a tiny split, a subset in predict). Here such a class
gets NaN with a warning naming it, and the macro AUROC averages only the classes that can be
scored. When every class can be scored the result is torchmetrics' own, bit for bit.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
from torchmetrics.classification import MulticlassAUROC
from torchmetrics.functional.classification import multiclass_auroc
from torchmetrics.utilities.data import dim_zero_cat


def unscorable_classes(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) bool: classes with no positive or no negative example in ``target``."""
    counts = torch.bincount(target.long().flatten(), minlength=num_classes)
    return (counts == 0) | (counts == target.numel())


def mark_unscorable(per_class: torch.Tensor, target: torch.Tensor, class_names: Optional[Sequence[str]] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per-class AUROC with NaN where unscorable, macro over the rest)``, warning about any."""
    k = per_class.numel()
    unscorable = unscorable_classes(target, k).to(per_class.device)
    per_class = per_class.masked_fill(unscorable, float("nan"))
    if bool(unscorable.any()):
        names = [(class_names[i] if class_names else str(i)) for i in torch.nonzero(unscorable).flatten().tolist()]
        warnings.warn(f"AUROC: class(es) {names} have no positive or no negative example among the {target.numel()} "
                      f"evaluated images, so their AUROC is NaN; the macro AUROC averages the other "
                      f"{k - len(names)} of {k} classes", stacklevel=2)  # fmt: skip
    scored = per_class[~torch.isnan(per_class)]
    return per_class, (scored.mean() if scored.numel() else torch.tensor(float("nan"), device=per_class.device))


def scorable_auroc(preds: torch.Tensor, target: torch.Tensor, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per-class AUROC, macro AUROC)`` of one set of predictions (functional form)."""
    per_class = multiclass_auroc(preds, target, len(class_names), average=None)
    return mark_unscorable(per_class, target, class_names)


class ScorableAUROC(MulticlassAUROC):
    """``MulticlassAUROC`` (macro or per class) with unscorable classes as NaN, left out of the macro."""

    def __init__(self, num_classes: int, average: Optional[str] = "macro",
                 class_names: Optional[Sequence[str]] = None, **kwargs):
        if average not in ("macro", None):
            raise ValueError(f"average must be 'macro' or None, got {average!r}")
        super().__init__(num_classes, average=None, **kwargs)
        self.macro = average == "macro"
        self.class_names = list(class_names) if class_names else None

    def compute(self) -> torch.Tensor:
        per_class, macro = mark_unscorable(super().compute(), dim_zero_cat(self.target), self.class_names)
        return macro if self.macro else per_class
