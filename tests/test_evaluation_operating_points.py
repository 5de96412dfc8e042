"""Thresholds chosen on validation, applied to test: a hand-made case."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_modules.evaluation.operating_points import (
    operating_points,
    positive_sets,
    threshold_for_sensitivity,
)

NAMES = ["mel", "nev", "bcc"]


def three_class(mel_score, labels):
    """Probabilities [s, (1 - s) / 2, (1 - s) / 2]: the score of "mel" is s."""
    s = np.asarray(mel_score, dtype=float)
    return np.asarray(labels), np.column_stack([s, (1 - s) / 2, (1 - s) / 2])


# Validation: ten melanomas scored 0.9 ... 0.05, four naevi.
VAL = three_class([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.5, 0.3, 0.1, 0.01], [0] * 10 + [1] * 4)
# Test: five melanomas (one exactly at the 0.80 threshold, 0.2) and five naevi.
TEST = three_class([0.95, 0.6, 0.2, 0.15, 0.08, 0.4, 0.25, 0.12, 0.06, 0.02], [0] * 5 + [1] * 5)


def rows_of(rows, positive, chosen_on):
    return {r["target_sensitivity"]: r for r in rows if r["positive"] == positive and r["chosen_on"] == chosen_on}


def test_thresholds_by_hand():
    # The largest threshold with sensitivity >= target is the ceil(target * P)-th largest positive
    # score: 8th, 9th (0.9 * 10 is 9.000000000000002 in floating point) and 10th of ten.
    scores, positive = VAL[1][:, 0], VAL[0] == 0
    assert [threshold_for_sensitivity(positive, scores, t) for t in (0.8, 0.9, 0.95)] == [0.2, 0.1, 0.05]
    assert threshold_for_sensitivity([True] * 4, [0.5] * 4, 0.8) == 0.5  # ties: sensitivity 1 there
    assert threshold_for_sensitivity([False, False], [0.5, 0.4], 0.8) is None


def test_operating_points_by_hand():
    rows = operating_points(*TEST, NAMES, val=VAL, n_boot=200)
    val = rows_of(rows, "mel", "val")
    assert [val[t]["threshold"] for t in (0.8, 0.9, 0.95)] == [0.2, 0.1, 0.05]
    assert val[0.8]["val_sensitivity"] == 0.8 and val[0.8]["val_specificity"] == 0.5
    # Test at 0.2: melanomas 0.95, 0.6, 0.2 (>= counts) called; naevi 0.12, 0.06, 0.02 cleared.
    assert (val[0.8]["sensitivity"], val[0.8]["specificity"]) == (0.6, 0.6)
    assert (val[0.9]["sensitivity"], val[0.9]["specificity"]) == (0.8, 0.4)
    assert (val[0.95]["sensitivity"], val[0.95]["specificity"]) == (1.0, 0.2)
    for row in val.values():
        for key in ("sensitivity", "specificity"):
            low, high = row[f"{key}_ci"]
            assert low <= row[key] <= high
    test = rows_of(rows, "mel", "test")
    assert test[0.8]["threshold"] == 0.15 and (test[0.8]["sensitivity"], test[0.8]["specificity"]) == (0.8, 0.6)
    assert test[0.9]["threshold"] == 0.08 and test[0.9]["specificity"] == 0.4
    assert test[0.8]["sensitivity_ci"] == [None, None] and "optimistic" in test[0.8]["note"]
    assert val[0.8]["n_positive"] == 5 and val[0.8]["n_negative"] == 5


def test_positive_set_scores_the_sum_of_its_probabilities():
    rows = operating_points(*TEST, NAMES, val=VAL, positive=["mel", "bcc"], n_boot=50)
    both = rows_of(rows, "mel+bcc", "val")
    assert both[0.8]["classes"] == ["mel", "bcc"]
    # Only mel images are positive (no bcc image); score s + (1 - s) / 2 is increasing in s, so
    # the same images are chosen: threshold 0.2 + 0.8 / 2.
    assert both[0.8]["threshold"] == pytest.approx(0.6)
    assert (both[0.8]["sensitivity"], both[0.8]["specificity"]) == (0.6, 0.6)
    assert positive_sets(NAMES, {"malignant": ["mel", "bcc"]})["malignant"] == [0, 2]
    with pytest.raises(ValueError, match="'scc'"):
        positive_sets(NAMES, ["mel", "scc"])


def test_a_class_absent_from_validation_has_no_threshold():
    rows = operating_points(*TEST, NAMES, val=VAL, n_boot=20)
    bcc = rows_of(rows, "bcc", "val")[0.9]
    assert bcc["threshold"] is None and bcc["sensitivity"] is None and "validation" in bcc["note"]
    assert rows_of(rows, "bcc", "test")[0.9]["threshold"] is None  # none on test either


def test_without_validation_only_test_chosen_rows():
    rows = operating_points(*TEST, NAMES, n_boot=20)
    assert {r["chosen_on"] for r in rows} == {"test"}
    assert len(rows) == 3 * 3


def test_grouped_intervals_are_wider_when_patients_repeat():
    rng = np.random.default_rng(0)
    s = rng.random(200)
    labels = (rng.random(200) > s).astype(int)  # 0 (mel) with probability s
    labels, probs = three_class(np.repeat(s, 3), np.repeat(labels, 3))
    patients = np.repeat(np.arange(200), 3)
    grouped = rows_of(operating_points(labels, probs, NAMES, val=(labels, probs), groups=patients, n_boot=400),
                      "mel", "val")[0.9]
    images = rows_of(operating_points(labels, probs, NAMES, val=(labels, probs), n_boot=400), "mel", "val")[0.9]
    width = lambda r: r["specificity_ci"][1] - r["specificity_ci"][0]  # noqa: E731
    assert width(grouped) > 1.4 * width(images)
