"""DeLong's variance of the AUROC, its confidence interval and the paired test of two correlated
ROC curves, as R's pROC computes them (``ci.auc(method = "delong")``, ``roc.test(method =
"delong", paired = TRUE)``); the tests check agreement with pROC 1.18 to 1e-6.

The placements are computed with midranks (Sun & Xu 2014), O(n log n): for each positive, the
share of negatives scored below it (ties count one half); for each negative, the share of
positives scored above it. The AUROC is the mean placement; its variance is
``var(positive placements) / m + var(negative placements) / n`` with sample (n - 1) variances.
As in pROC, the interval is the normal approximation on the AUROC scale, clipped to [0, 1], and
the paired test's interval is ``difference +- z * sd``.

DeLong treats images as independent: with several images per patient its interval is too narrow.
The grouped bootstrap (``bootstrap.py``) is the interval to quote; DeLong's is given beside it
for single-class AUROC, as reviewers expect.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.stats import norm, rankdata

from lightning_modules.evaluation.inputs import check_scores


def placements(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(auc (k,), positive placements (k, m), negative placements (k, n))`` of ``k`` score rows
    (models) on the same images, ``positive`` the (N,) bool truth."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positive = np.asarray(positive, dtype=bool)
    pos, neg = scores[:, positive], scores[:, ~positive]
    m, n = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # midranks: ties share the average rank
    pos_ranks, neg_ranks = ranks[:, :m], ranks[:, m:]
    v_pos = (pos_ranks - rankdata(pos, axis=1)) / n  # negatives below each positive (+ half the ties)
    v_neg = 1.0 - (neg_ranks - rankdata(neg, axis=1)) / m  # positives above each negative (+ half the ties)
    return v_pos.mean(axis=1), v_pos, v_neg


def _covariance(v_pos: np.ndarray, v_neg: np.ndarray) -> np.ndarray:
    """(k, k) covariance of the AUROCs of the k rows."""
    m, n = v_pos.shape[1], v_neg.shape[1]
    return np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n


def _counts_note(positive: np.ndarray) -> Optional[str]:
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        return f"DeLong needs at least 2 positive and 2 negative images; there are {m} and {n}"
    return None


def delong_ci(positive, scores, level: float = 0.95) -> dict:
    """AUROC, DeLong standard error and ``level`` interval (normal, clipped to [0, 1]) as pROC's
    ``ci.auc(roc(positive, scores, levels = c(0, 1), direction = "<"), method = "delong")``."""
    positive = np.asarray(positive, dtype=bool)
    note = _counts_note(positive)
    if note:
        return {"auc": None, "se": None, "ci": [None, None], "note": note}
    auc, v_pos, v_neg = placements(positive, scores)
    se = float(np.sqrt(_covariance(v_pos, v_neg)[0, 0]))
    z = norm.ppf(0.5 + level / 2)
    low, high = (float(np.clip(auc[0] + s * z * se, 0.0, 1.0)) for s in (-1, 1))
    return {"auc": float(auc[0]), "se": se, "ci": [low, high]}


def delong_test(positive, scores_a, scores_b, level: float = 0.95) -> dict:
    """Paired DeLong test of AUROC(a) = AUROC(b) on the same images, as pROC's ``roc.test(roc_a,
    roc_b, method = "delong", paired = TRUE)``: difference a - b, its standard error and interval,
    z and the two-sided p. Equal AUROCs with zero variance (identical scores) give z = 0, p = 1."""
    positive = np.asarray(positive, dtype=bool)
    note = _counts_note(positive)
    if note:
        return {"auc_a": None, "auc_b": None, "difference": None, "se": None, "ci": [None, None], "z": None,
                "p": None, "note": note}
    auc, v_pos, v_neg = placements(positive, np.stack([np.asarray(scores_a, float), np.asarray(scores_b, float)]))
    cov = _covariance(v_pos, v_neg)
    difference = float(auc[0] - auc[1])
    se = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
    if se == 0.0:
        z = 0.0 if difference == 0.0 else float(np.sign(difference) * np.inf)
    else:
        z = difference / se
    crit = norm.ppf(0.5 + level / 2)
    return {"auc_a": float(auc[0]), "auc_b": float(auc[1]), "difference": difference, "se": se,
            "ci": [float(difference - crit * se), float(difference + crit * se)], "z": z,
            "p": float(2 * norm.sf(abs(z)))}


def delong_ci_per_class(labels, probs, class_names: Sequence[str], level: float = 0.95) -> dict[str, dict]:
    """One-vs-rest DeLong interval of each class (score: that class's probability)."""
    labels, probs = check_scores(labels, probs, class_names)
    return {name: delong_ci(labels == c, probs[:, c], level) for c, name in enumerate(class_names)}


def delong_test_per_class(labels, probs_a, probs_b, class_names: Sequence[str], level: float = 0.95) -> dict[str, dict]:
    """One-vs-rest paired DeLong test of each class."""
    labels, probs_a = check_scores(labels, probs_a, class_names)
    _, probs_b = check_scores(labels, probs_b, class_names)
    return {name: delong_test(labels == c, probs_a[:, c], probs_b[:, c], level) for c, name in enumerate(class_names)}
