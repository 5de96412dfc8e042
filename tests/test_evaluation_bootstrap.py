"""Grouped bootstrap: the weighted AUROC equals scikit-learn's, intervals cover a known AUROC at
about the nominal rate, grouping widens them where patients repeat, and the paired version."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from lightning_modules.evaluation.bootstrap import (
    GroupBootstrap,
    WeightedAUROC,
    bootstrap_p_value,
    classification_cis,
    paired_classification_bootstrap,
    percentile_interval,
)


def softmax_data(rng, n, k, shift=1.0, decimals=None):
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += shift
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, (np.round(probs, decimals) if decimals else probs)


def binary_probs(score):
    p = 1 / (1 + np.exp(-score))
    return np.column_stack([1 - p, p])


def test_weighted_auroc_is_sklearns_with_sample_weights_and_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 1)  # heavy ties
    positive = rng.random(300) < 0.3
    codes = rng.integers(0, 40, 300)
    auroc = WeightedAUROC(scores, positive, codes, 40)
    weights = rng.integers(0, 4, size=(40, 5)).astype(float)
    expected = [roc_auc_score(positive, scores, sample_weight=weights[codes, j]) for j in range(5)]
    assert auroc(weights) == pytest.approx(expected, abs=1e-12)
    assert auroc(np.ones((40, 1)))[0] == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    none_positive = np.zeros((40, 1))
    none_positive[np.unique(codes[~positive])[0]] = 1  # only a group, if any, without a positive
    if not positive[codes == np.unique(codes[~positive])[0]].any():
        assert np.isnan(auroc(none_positive)[0])


def test_point_estimates_are_sklearns():
    rng = np.random.default_rng(1)
    labels, probs = softmax_data(rng, 500, 4, decimals=2)
    result = classification_cis(labels, probs, list("abcd"), n_boot=20)
    assert result["auroc_per_class"]["c"] == pytest.approx(roc_auc_score(labels == 2, probs[:, 2]), abs=1e-12)
    macro = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(4)])
    assert result["auroc"] == pytest.approx(macro, abs=1e-12)
    assert result["bacc"] == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)), abs=1e-12)
    assert result["acc"] == pytest.approx(accuracy_score(labels, probs.argmax(1)), abs=1e-12)
    for key in ("auroc", "bacc", "acc"):
        low, high = result[f"{key}_ci"]
        assert low < result[key] < high


def test_resamples_are_groups_drawn_with_replacement_and_seeded():
    patients = ["p1", "p1", "p2", "p3", "p3", "p3"]
    blocks = list(GroupBootstrap(patients, 6, n_boot=250, seed=5).blocks())
    assert [b.shape for b in blocks] == [(3, 100), (3, 100), (3, 50)]
    weights = np.hstack(blocks)
    assert (weights.sum(axis=0) == 3).all()  # G groups drawn each time
    assert np.array_equal(weights, np.hstack(list(GroupBootstrap(patients, 6, 250, 5).blocks())))
    assert not np.array_equal(weights, np.hstack(list(GroupBootstrap(patients, 6, 250, 6).blocks())))
    # Multinomial(3, 1/3) per resample: E[count] = 1, Var = 3 * 1/3 * 2/3.
    assert weights.mean() == pytest.approx(1.0, abs=0.08)
    assert weights.var() == pytest.approx(2 / 3, abs=0.1)


def clustered_sample(rng, n_lesions=80, shift=1.0, lesion_sd=0.8, image_sd=0.6):
    """Lesions with 1-4 photos; the label belongs to the lesion, photos share a lesion effect."""
    malignant = rng.random(n_lesions) < 0.4
    lesion = np.repeat(np.arange(n_lesions), rng.integers(1, 5, n_lesions))
    lesion_effect = rng.normal(0, lesion_sd, n_lesions)[lesion]
    score = shift * malignant[lesion] + lesion_effect + rng.normal(0, image_sd, lesion.size)
    return malignant[lesion].astype(int), score, lesion


def coverage(n_sims: int, n_boot: int, grouped: bool) -> tuple[float, float]:
    # A positive and a negative photo always come from different lesions, so the image-level AUROC
    # is P(N(shift, s2) > N(0, s2)) = Phi(shift / sqrt(2 s2)), s2 = lesion_sd^2 + image_sd^2.
    true_auroc = norm.cdf(1.0 / np.sqrt(2 * (0.8**2 + 0.6**2)))
    rng = np.random.default_rng(2024)
    hits, widths = 0, []
    for sim in range(n_sims):
        labels, score, lesion = clustered_sample(rng)
        ci = classification_cis(labels, binary_probs(score), ["benign", "malignant"], lesion if grouped else None,
                                n_boot=n_boot, seed=sim)["auroc_ci"]
        hits += ci[0] <= true_auroc <= ci[1]
        widths.append(ci[1] - ci[0])
    return hits / n_sims, float(np.mean(widths))


def test_grouped_intervals_cover_a_known_auroc_at_the_nominal_rate():
    covered, width = coverage(n_sims=200, n_boot=400, grouped=True)
    assert 0.90 <= covered <= 0.98
    covered_images, width_images = coverage(n_sims=200, n_boot=400, grouped=False)
    assert covered_images < 0.90  # photos of a lesion taken as independent: too narrow
    assert width > 1.25 * width_images


@pytest.mark.slow
def test_grouped_coverage_with_the_default_resamples():
    covered, _ = coverage(n_sims=400, n_boot=2000, grouped=True)
    assert 0.92 <= covered <= 0.975


def test_duplicated_patients_widen_grouped_but_not_image_intervals():
    rng = np.random.default_rng(4)
    labels, probs = softmax_data(rng, 300, 3)
    copies = 4
    dup_labels, dup_probs = np.repeat(labels, copies), np.repeat(probs, copies, axis=0)
    patients = np.repeat(np.arange(300), copies)
    once = classification_cis(labels, probs, list("abc"), np.arange(300), n_boot=1000)
    grouped = classification_cis(dup_labels, dup_probs, list("abc"), patients, n_boot=1000)
    images = classification_cis(dup_labels, dup_probs, list("abc"), None, n_boot=1000)
    width = lambda r, k: r[f"{k}_ci"][1] - r[f"{k}_ci"][0]  # noqa: E731
    for key in ("auroc", "bacc", "acc"):
        # Four copies of each patient carry no more information than one: the grouped interval
        # stays as wide as on the data without copies, the image interval halves (1 / sqrt(4)).
        assert width(grouped, key) == pytest.approx(width(once, key), rel=0.15)
        assert width(grouped, key) > 1.6 * width(images, key)
    assert "groups (patients or lesions)" in grouped["method"] and "2000" not in grouped["method"]
    assert "images (no group ids given)" in images["method"]


def test_rare_class_absent_from_some_resamples():
    labels = np.array([0] * 60 + [1] * 60 + [2] * 2)
    probs = np.full((122, 3), 1 / 3)
    probs[:, 2] += np.linspace(0, 0.1, 122)
    result = classification_cis(labels, probs, list("abc"), n_boot=300)
    assert 0 < result["auroc_per_class_unscorable_resamples"]["c"] < 300
    assert result["auroc_per_class_unscorable_resamples"]["a"] == 0


def test_paired_bootstrap():
    rng = np.random.default_rng(6)
    labels, probs = softmax_data(rng, 400, 3)
    patients = rng.integers(0, 150, 400)
    same = paired_classification_bootstrap(labels, probs, probs, list("abc"), patients, n_boot=200)
    assert same["auroc"]["difference"] == 0 and same["auroc"]["ci"] == [0, 0] and same["auroc"]["p"] == 1
    noisy = np.abs(probs + rng.normal(0, 0.3, probs.shape))
    noisy /= noisy.sum(axis=1, keepdims=True)
    result = paired_classification_bootstrap(labels, probs, noisy, list("abc"), patients, n_boot=500)
    assert result["auroc"]["difference"] == pytest.approx(result["auroc"]["a"] - result["auroc"]["b"])
    assert result["auroc"]["a"] == classification_cis(labels, probs, list("abc"), n_boot=1)["auroc"]
    assert result["auroc"]["difference"] > 0.05 and result["auroc"]["ci"][0] > 0
    assert result["auroc"]["p"] == pytest.approx(2 / 501)  # no resample reaches 0: the smallest p of 500
    assert "paired" in result["method"]


def test_p_value_and_interval_by_hand():
    differences = np.array([-0.1, 0.0, 0.1, 0.2, 0.3, np.nan])
    # tails: <= 0 holds 2, >= 0 holds 4; p = 2 (2 + 1) / (5 + 1)
    assert bootstrap_p_value(differences) == pytest.approx(1.0)
    assert bootstrap_p_value(np.array([0.1] * 9 + [-0.1])) == pytest.approx(2 * 2 / 11)
    assert percentile_interval(np.arange(101.0)) == pytest.approx([2.5, 97.5])
    assert percentile_interval(np.array([np.nan])) == [None, None]
