"""Calibration: expected calibration error (ECE), reliability diagrams, temperature scaling.

ECE is torchmetrics' ``CalibrationError(norm="l1", n_bins=15)``: the confidence-weighted gap
``sum_b (n_b / N) |accuracy_b - confidence_b|`` over 15 equal-width bins. Top-label (multiclass):
the confidence is the largest probability and "correct" means the argmax is the label. Per class
(one-vs-rest, torchmetrics' binary task): the confidence is that class's probability and the
outcome is "the image is of that class". torchmetrics' bins are half-open, [i/15, (i+1)/15), and
a confidence of exactly 1 falls in a bin of its own; the reliability bins here follow the same
rule so they add up to the same ECE.

Temperature scaling (Guo et al. 2017) divides the logits by one T > 0 fitted on the validation
split by minimising the negative log-likelihood; it changes no predicted class (the argmax) and
no AUROC of a binary task, only the confidence. A one-vs-rest AUROC of a multiclass task can move
slightly: a class's probability also depends on the other logits, which T rescales with it.
Log-probabilities work as logits (softmax is unchanged by a per-image constant), so a predictions
file is enough to fit it.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from lightning_modules.evaluation.inputs import check_scores
from lightning_modules.utils.plots import figure_to_array, plt

N_BINS = 15
#: Smallest probability taken as a log-probability: predictions files round to 6 decimals, so a
#: stored 0 means "below 5e-7", not an impossible class.
MIN_PROBABILITY = 1e-7
#: Search range of the temperature; a fit at either end is reported as such.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def expected_calibration_error(labels, probs, n_bins: int = N_BINS) -> float:
    """Top-label ECE (torchmetrics, multiclass task)."""
    labels, probs = check_scores(labels, probs)
    return float(multiclass_calibration_error(torch.as_tensor(probs), torch.as_tensor(labels), probs.shape[1],
                                              n_bins=n_bins, norm="l1"))


def expected_calibration_error_per_class(labels, probs, class_names: Sequence[str], n_bins: int = N_BINS
                                         ) -> dict[str, float]:
    """One-vs-rest ECE of each class's probability (torchmetrics, binary task)."""
    labels, probs = check_scores(labels, probs, class_names)
    target = torch.as_tensor(labels)
    columns = torch.as_tensor(np.ascontiguousarray(probs.T))  # contiguous rows: bucketize copies strided input
    return {name: float(binary_calibration_error(columns[c], (target == c).long(), n_bins=n_bins, norm="l1"))
            for c, name in enumerate(class_names)}


def reliability_bins(confidence, correct, n_bins: int = N_BINS) -> list[dict]:
    """The non-empty bins of a reliability diagram: ``low``, ``high``, ``count``, mean
    ``confidence`` and ``accuracy`` (share correct). Same binning as torchmetrics (float32,
    ``torch.bucketize(right=True)``), so ``sum(count * |accuracy - confidence|) / N`` is its ECE."""
    conf = torch.as_tensor(np.asarray(confidence), dtype=torch.float32)
    hits = torch.as_tensor(np.asarray(correct), dtype=torch.float32)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)
    index = torch.bucketize(conf, edges, right=True) - 1
    rows = []
    for b in torch.unique(index).tolist():
        inside = index == b
        rows.append({
            "low": float(edges[b]),
            "high": float(edges[b + 1]) if b < n_bins else 1.0,
            "count": int(inside.sum()),
            "confidence": float(conf[inside].mean()),
            "accuracy": float(hits[inside].mean()),
        })
    return rows


def top_label(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, correct)`` of the top-label prediction."""
    labels, probs = check_scores(labels, probs)
    return probs.max(axis=1), (np.argmax(probs, axis=1) == labels)


def reliability_figure(bins: Sequence[dict], title: str = "", ece: Optional[float] = None) -> np.ndarray:
    """Accuracy against mean confidence per bin (bars span the bin, width by bin), the diagonal of
    perfect calibration, and the image count per bin below: an RGB uint8 array."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.2, 4.8), dpi=100, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    for row in bins:
        width = max(row["high"] - row["low"], 0.01)
        top.bar(row["low"], row["accuracy"], width=width, align="edge", color="tab:blue", edgecolor="white",
                alpha=0.85)
        top.plot([row["low"] + width / 2], [row["confidence"]], marker="_", color="tab:red", markersize=10)
        bottom.bar(row["low"], row["count"], width=width, align="edge", color="grey", edgecolor="white")
    top.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=0.8)
    top.set_ylim(0, 1)
    top.set_xlim(0, 1.02)
    top.set_ylabel("accuracy (bars); mean confidence (red)")
    top.set_title(title + (f"  ECE {ece:.3f}" if ece is not None else ""), fontsize=9)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("images")
    fig.tight_layout()
    return figure_to_array(fig)


def log_probabilities(probs) -> np.ndarray:
    """Probabilities as logits for temperature scaling (clipped at :data:`MIN_PROBABILITY`)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), MIN_PROBABILITY, None))


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    labels = np.asarray(labels, dtype=np.int64)
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The T > 0 minimising the mean NLL of ``softmax(logits / T)``. The NLL is convex in 1/T, so a
    bounded scalar search over log T finds its minimum."""
    labels, logits = check_scores(labels, logits)
    low, high = np.log(bounds[0]), np.log(bounds[1])
    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
                             bounds=(low, high), method="bounded", options={"xatol": 1e-7})
    temperature = float(np.exp(result.x))
    if min(abs(result.x - low), abs(result.x - high)) < 1e-4:
        warnings.warn(f"temperature scaling: the fitted T = {temperature:.4g} is at the end of its search range "
                      f"{bounds}; the validation predictions are far from calibrated", stacklevel=2)
    return temperature


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """``softmax(logits / T)``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def temperature_scaling(val_labels, val_probs, labels, probs, n_bins: int = N_BINS) -> dict:
    """Fit T on the validation predictions (their log-probabilities), apply it to the evaluated
    ones, and report ECE and NLL before and after on the evaluated images."""
    val_labels, val_probs = check_scores(val_labels, val_probs)
    labels, probs = check_scores(labels, probs)
    temperature = fit_temperature(log_probabilities(val_probs), val_labels)
    logits = log_probabilities(probs)
    scaled = apply_temperature(logits, temperature)
    return {
        "temperature": temperature,
        "fitted_on": "val",
        "ece_before": expected_calibration_error(labels, probs, n_bins),
        "ece_after": expected_calibration_error(labels, scaled, n_bins),
        "nll_before": negative_log_likelihood(logits, labels),
        "nll_after": negative_log_likelihood(logits, labels, temperature),
    }
