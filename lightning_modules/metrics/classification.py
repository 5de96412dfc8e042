"""The scores of one set of class predictions, as ``metrics.json`` and cross-validation report them."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_recall,
)

from lightning_modules.errors import NonFiniteError
from lightning_modules.metrics.auroc import scorable_auroc


def classification_scores(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Macro one-vs-rest AUROC, balanced accuracy (macro recall), accuracy, per-class AUROC and the
    confusion matrix (rows: true class) of one set of predictions. NaN or infinite probabilities
    are refused: scores computed from them are numbers, and misleading ones."""
    preds, target, k = torch.as_tensor(probs).float(), torch.as_tensor(labels).long(), len(class_names)
    bad = ~torch.isfinite(preds).all(dim=-1) if preds.numel() else torch.zeros(0, dtype=torch.bool)
    if bad.any():
        raise NonFiniteError(f"{int(bad.sum())} of {len(preds)} predictions have NaN or infinite probabilities "
                             f"(e.g. row {int(bad.nonzero()[0, 0])}); no score is computed from them")
    per_class, macro = scorable_auroc(preds, target, class_names)
    finite = lambda v: float(v) if torch.isfinite(v) else None  # noqa: E731 - JSON has no NaN
    return {
        "auroc": finite(macro),
        "auroc_classes_scored": int(torch.isfinite(per_class).sum()),
        "bacc": float(multiclass_recall(preds, target, k, average="macro")),
        "acc": float(multiclass_accuracy(preds, target, k, average="micro")),
        "auroc_per_class": {name: finite(v) for name, v in zip(class_names, per_class)},
        "confusion_matrix": multiclass_confusion_matrix(preds, target, k).tolist(),
    }
