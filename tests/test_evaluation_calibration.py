"""ECE equals torchmetrics' CalibrationError and a hand computation; reliability bins add up to it;
temperature scaling recovers a known temperature and never changes a prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import CalibrationError

from lightning_modules.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    expected_calibration_error_per_class,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    reliability_figure,
    temperature_scaling,
    top_label,
)

# Top-label confidences 0.90 (right), 0.92 (wrong), 0.55 (right), 0.50 (wrong), 0.41 (right),
# 1.00 (right); 15 bins of width 1/15: [0.8667, 0.9333) holds 0.90 and 0.92, then 0.55, 0.50
# and 0.41 alone, and a confidence of exactly 1 has a bin of its own in torchmetrics.
PROBS = np.array([[0.90, 0.05, 0.05], [0.92, 0.04, 0.04], [0.55, 0.45, 0.00],
                  [0.50, 0.30, 0.20], [0.41, 0.30, 0.29], [1.00, 0.00, 0.00]])
LABELS = np.array([0, 1, 0, 2, 0, 0])
BY_HAND = (2 * abs(0.5 - 0.91) + abs(1 - 0.55) + abs(0 - 0.50) + abs(1 - 0.41) + abs(1 - 1.0)) / 6


def test_ece_by_hand():
    assert expected_calibration_error(LABELS, PROBS) == pytest.approx(BY_HAND, abs=1e-6)
    # Class 0 one-vs-rest: the same probabilities and outcomes as the top label here.
    assert expected_calibration_error_per_class(LABELS, PROBS, list("abc"))["a"] == pytest.approx(BY_HAND, abs=1e-6)


def test_ece_is_torchmetrics_calibration_error():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 2000)
    logits = rng.normal(size=(2000, 5)) * 2
    logits[np.arange(2000), labels] += 1
    probs = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    metric = CalibrationError(task="multiclass", num_classes=5, n_bins=15, norm="l1")
    expected = float(metric(torch.as_tensor(probs), torch.as_tensor(labels)))
    assert expected_calibration_error(labels, probs) == pytest.approx(expected, abs=1e-7)
    per_class = expected_calibration_error_per_class(labels, probs, list("abcde"))
    for c, name in enumerate("abcde"):
        binary = CalibrationError(task="binary", n_bins=15, norm="l1")
        target = torch.as_tensor((labels == c).astype(int))
        assert per_class[name] == pytest.approx(float(binary(torch.as_tensor(probs[:, c]), target)), abs=1e-7)
    # The reliability bins are torchmetrics' bins: they add up to the same ECE.
    bins = reliability_bins(*top_label(labels, probs))
    assert sum(b["count"] for b in bins) == 2000
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / 2000
    assert ece == pytest.approx(expected, abs=1e-6)


def test_reliability_bins_by_hand():
    bins = reliability_bins(*top_label(LABELS, PROBS))
    assert [b["count"] for b in bins] == [1, 1, 1, 2, 1]
    assert bins[3]["low"] == pytest.approx(13 / 15) and bins[3]["accuracy"] == 0.5
    assert bins[3]["confidence"] == pytest.approx(0.91)
    assert bins[-1]["low"] == 1.0 and bins[-1]["high"] == 1.0  # exactly 1: its own bin
    image = reliability_figure(bins, "test", ece=0.1)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def calibrated_sample(rng, n, k=4):
    """Labels drawn from softmax(logits): those logits are calibrated by construction."""
    logits = rng.normal(size=(n, k)) * 2
    probs = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    labels = (rng.random((n, 1)) > np.cumsum(probs, axis=1)).sum(axis=1).clip(max=k - 1)
    return logits, labels


def test_temperature_recovers_a_known_overconfidence():
    rng = np.random.default_rng(1)
    logits, labels = calibrated_sample(rng, 4000)
    # An overconfident model: logits multiplied by 2.5; the fit should divide them back.
    temperature = fit_temperature(2.5 * logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.08)
    grid = np.exp(np.linspace(np.log(1), np.log(5), 321))  # steps of 0.5 %
    best = grid[np.argmin([negative_log_likelihood(2.5 * logits, labels, t) for t in grid])]
    assert temperature == pytest.approx(best, rel=5e-3)
    scaled = apply_temperature(2.5 * logits, temperature)
    assert np.array_equal(scaled.argmax(axis=1), logits.argmax(axis=1))
    assert scaled.sum(axis=1) == pytest.approx(np.ones(4000))


def test_temperature_scaling_report_on_probabilities():
    rng = np.random.default_rng(2)
    val_logits, val_labels = calibrated_sample(rng, 3000)
    test_logits, test_labels = calibrated_sample(rng, 3000)
    overconfident = lambda z: torch.softmax(torch.as_tensor(3 * z), dim=1).numpy()  # noqa: E731
    report = temperature_scaling(val_labels, overconfident(val_logits), test_labels, overconfident(test_logits))
    assert report["fitted_on"] == "val"
    assert report["temperature"] == pytest.approx(3.0, rel=0.1)
    assert report["ece_after"] < 0.5 * report["ece_before"]
    assert report["nll_after"] < report["nll_before"]


def test_temperature_rejects_nonpositive():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        apply_temperature(np.zeros((2, 2)), 0.0)
