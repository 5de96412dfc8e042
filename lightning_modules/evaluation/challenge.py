"""The ISIC challenges' own metrics, so a result can be set beside a leaderboard.

ISIC 2019 (ImageMarkup/isic-challenge-scoring, ``isic_challenge_scoring/metrics.py`` and
``classification.py``, https://github.com/ImageMarkup/isic-challenge-scoring/tree/cf264bccc3414ce3d0d190a0f2844d8b7fc06d8c):

* balanced multiclass accuracy: mean over the classes present of the recall of the argmax; an
  image whose largest probability is shared by several classes counts as wrong ("undecided");
* per class, with the class's probability thresholded at ``> 0.5`` (not the argmax): accuracy,
  sensitivity, specificity, Dice, PPV, NPV; and from the probabilities: AUC, average precision
  and ``auc_sens_80``, the area under the ROC curve over the FPR range where TPR >= 0.8 (the
  curve's height counts from 0, so it lies in [0, 1 - FPR at TPR 0.8]).
  Where the scorer calls an undefined ratio (e.g. PPV with no positive prediction) a perfect 1.0,
  this module reports ``None``: a number that was not measured is not shown as one.

ISIC 2024: the partial AUC above 80 % TPR, the area between the ROC curve and the line TPR = 0.8
(only where the curve lies above it), in [0, 0.2]; a random ranking scores 0.02. The competition
computes it as ``s = roc_auc_score(1 - y, 1 - p, max_fpr=0.2)`` (scikit-learn's
McClish-standardised partial AUC of the flipped problem) rescaled by
``0.5 m^2 + (m - 0.5 m^2) / 0.5 (s - 0.5)`` with ``m = 0.2``; a test checks the two agree.

Both partial areas use the ROC curve with straight segments between its points (ties between a
positive and a negative give a diagonal segment), and a point added where the curve crosses the
TPR level.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import auc as trapezoid_area
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from lightning_modules.evaluation.inputs import check_scores

MIN_TPR = 0.8
ISIC2019_THRESHOLD = 0.5


def _has_both(positive: np.ndarray) -> bool:
    return bool(positive.any() and (~positive).any())


def roc_above_tpr(positive, scores, min_tpr: float = MIN_TPR) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(fpr, tpr)`` of the part of the ROC curve with TPR >= ``min_tpr``, starting at the point
    where the curve reaches it; ``None`` without positives and negatives."""
    positive = np.asarray(positive, dtype=bool)
    if not 0 < min_tpr <= 1:
        raise ValueError(f"min_tpr must lie in (0, 1], got {min_tpr}")
    if not _has_both(positive):
        return None
    fpr, tpr, _ = roc_curve(positive, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    i = int(np.searchsorted(tpr, min_tpr, side="left"))  # tpr[0] = 0 < min_tpr <= tpr[-1] = 1
    crossing = float(np.interp(min_tpr, tpr[i - 1:i + 1], fpr[i - 1:i + 1]))
    return np.concatenate([[crossing], fpr[i:]]), np.concatenate([[min_tpr], tpr[i:]])


def pauc_above_tpr(positive, scores, min_tpr: float = MIN_TPR) -> Optional[float]:
    """ISIC 2024's partial AUC: the area of the ROC curve above TPR = ``min_tpr``, in [0, 1 - min_tpr]."""
    segment = roc_above_tpr(positive, scores, min_tpr)
    return None if segment is None else float(trapezoid_area(segment[0], segment[1] - min_tpr))


def auc_above_sensitivity(positive, scores, min_tpr: float = MIN_TPR) -> Optional[float]:
    """ISIC 2019's ``auc_sens_80``: the area under the ROC curve over the FPR range where TPR >= ``min_tpr``."""
    segment = roc_above_tpr(positive, scores, min_tpr)
    return None if segment is None else float(trapezoid_area(segment[0], segment[1]))


def _ratio(numerator: float, denominator: float) -> Optional[float]:
    return float(numerator / denominator) if denominator > 0 else None


def _class_scores(positive: np.ndarray, score: np.ndarray) -> dict[str, Optional[float]]:
    predicted = score > ISIC2019_THRESHOLD
    tp = float(np.sum(predicted & positive))
    fp = float(np.sum(predicted & ~positive))
    fn = float(np.sum(~predicted & positive))
    tn = float(np.sum(~predicted & ~positive))
    both = _has_both(positive)
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "auc": float(roc_auc_score(positive, score)) if both else None,
        "auc_sens_80": auc_above_sensitivity(positive, score),
        "ap": float(average_precision_score(positive, score)) if positive.any() else None,
    }


def isic2019_balanced_accuracy(labels, probs) -> float:
    """Mean recall over the classes present; a tie for the largest probability counts as wrong."""
    labels, probs = check_scores(labels, probs)
    top = probs.max(axis=1, keepdims=True)
    decided = (probs == top).sum(axis=1) == 1
    correct = decided & (np.argmax(probs, axis=1) == labels)
    present = np.unique(labels)
    return float(np.mean([correct[labels == c].mean() for c in present]))


def isic2019_scores(labels, probs, class_names: Sequence[str]) -> dict:
    """ISIC 2019's aggregate and per-class metrics (see the module docstring)."""
    labels, probs = check_scores(labels, probs, class_names)
    per_class = {name: _class_scores(labels == c, probs[:, c]) for c, name in enumerate(class_names)}
    metrics = next(iter(per_class.values())).keys()
    macro = {}
    for metric in metrics:
        values = [row[metric] for row in per_class.values() if row[metric] is not None]
        macro[metric] = float(np.mean(values)) if values else None
    return {
        "balanced_multiclass_accuracy": isic2019_balanced_accuracy(labels, probs),
        "per_class": per_class,
        "macro_average": macro,
        "threshold": ISIC2019_THRESHOLD,
    }


def pauc_per_class(labels, probs, class_names: Sequence[str], min_tpr: float = MIN_TPR) -> dict[str, Optional[float]]:
    """ISIC 2024's partial AUC of each class one-vs-rest."""
    labels, probs = check_scores(labels, probs, class_names)
    return {name: pauc_above_tpr(labels == c, probs[:, c], min_tpr) for c, name in enumerate(class_names)}
