"""ISIC 2024's partial AUC equals the competition's formula; ISIC 2019's metrics by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lightning_modules.evaluation.challenge import (
    auc_above_sensitivity,
    isic2019_balanced_accuracy,
    isic2019_scores,
    pauc_above_tpr,
    pauc_per_class,
)


def competition_pauc(y, p, min_tpr=0.8):
    """The ISIC 2024 (Kaggle) scoring: sklearn's McClish-standardised partial AUC of the flipped
    problem, mapped back to the raw area."""
    m = 1 - min_tpr
    s = roc_auc_score(1 - np.asarray(y), 1 - np.asarray(p), max_fpr=m)
    return 0.5 * m**2 + (m - 0.5 * m**2) / 0.5 * (s - 0.5)


@pytest.mark.parametrize("seed", range(20))
def test_pauc_is_the_competition_formula(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(int)
    y[:2] = [0, 1]
    p = np.clip(rng.normal(0.4 + rng.uniform(0, 0.4) * y, 0.25), 0, 1)
    assert pauc_above_tpr(y, p) == pytest.approx(competition_pauc(y, p), abs=1e-12)
    tied = np.round(p * 10) / 10  # on a 0.1 grid: ties across the classes, diagonal ROC segments
    assert pauc_above_tpr(y, tied) == pytest.approx(competition_pauc(y, tied), abs=1e-12)
    assert pauc_above_tpr(y, tied, 0.9) == pytest.approx(competition_pauc(y, tied, 0.9), abs=1e-12)


def test_pauc_range():
    y = np.array([0, 0, 1, 1])
    assert pauc_above_tpr(y, [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.2)  # perfect
    assert pauc_above_tpr(y, [0.9, 0.8, 0.2, 0.1]) == pytest.approx(0.0)  # reversed
    assert pauc_above_tpr(y, [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.02)  # chance: the diagonal
    assert pauc_above_tpr([0, 0, 0], [0.1, 0.2, 0.3]) is None


def test_partial_areas_by_hand():
    # Ranked: P .9, N .85, P .8, P .7, N .6, N .5, P .4, N .3, P .2, N .1. The curve first reaches
    # TPR 0.8 at FPR 0.6, stays there to FPR 0.8, then rises to 1.
    y = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]
    p = [0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert pauc_above_tpr(y, p) == pytest.approx(0.2 * 0.2)
    assert auc_above_sensitivity(y, p) == pytest.approx(0.2 * 0.8 + 0.2 * 1.0)
    # Four positives and two negatives tied at 0.6: one diagonal from (0, 0.2) to (0.4, 1.0),
    # crossing TPR 0.8 at FPR 0.3.
    y = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.3, 0.2, 0.1]
    assert pauc_above_tpr(y, p) == pytest.approx(0.5 * 0.1 * 0.2 + 0.6 * 0.2)
    assert auc_above_sensitivity(y, p) == pytest.approx(0.1 * 0.9 + 0.6 * 1.0)


def test_isic2019_balanced_accuracy_counts_ties_as_wrong():
    labels = np.array([0, 0, 1, 1, 2])
    probs = np.array([[0.5, 0.5, 0.0],  # tie for the top: "undecided", wrong
                      [0.7, 0.2, 0.1],  # right
                      [0.1, 0.8, 0.1],  # right
                      [0.6, 0.3, 0.1],  # wrong
                      [0.2, 0.2, 0.6]])  # right
    assert isic2019_balanced_accuracy(labels, probs) == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_isic2019_per_class_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[0.6, 0.3, 0.1], [0.4, 0.3, 0.3], [0.7, 0.2, 0.1],
                      [0.2, 0.6, 0.2], [0.3, 0.3, 0.4], [0.1, 0.5, 0.4]])
    scores = isic2019_scores(labels, probs, ["a", "b", "c"])
    a = scores["per_class"]["a"]  # > 0.5: images 1 and 3; truth: 1 and 2 -> TP 1, FP 1, FN 1, TN 3
    assert (a["sensitivity"], a["specificity"], a["ppv"], a["npv"]) == pytest.approx((0.5, 0.75, 0.5, 0.75))
    assert a["dice"] == pytest.approx(2 / 4) and a["accuracy"] == pytest.approx(4 / 6)
    assert a["auc"] == pytest.approx(roc_auc_score(labels == 0, probs[:, 0]))
    c = scores["per_class"]["c"]  # never above 0.5: the scorer's "freebie" 1.0 PPV is None here
    assert c["ppv"] is None and c["sensitivity"] == 0.0 and c["specificity"] == 1.0
    assert scores["threshold"] == 0.5
    assert scores["macro_average"]["ppv"] == pytest.approx(np.mean([a["ppv"], scores["per_class"]["b"]["ppv"]]))
    per_class = pauc_per_class(labels, probs, ["a", "b", "c"])
    assert per_class["a"] == pytest.approx(pauc_above_tpr(labels == 0, probs[:, 0]))
