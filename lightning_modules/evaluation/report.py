"""One evaluation for every place that reports results: :func:`evaluate` (one prediction set),
:func:`compare` (two prediction sets on the same images) and :func:`holm` (a family of p-values).

The report's keys are fixed so scripts can read them (``docs/evaluation.md`` describes each); it
is JSON-safe: plain Python numbers, ``None`` where a value does not exist, never NaN.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from lightning_modules.evaluation.bootstrap import (
    DEFAULT_N_BOOT,
    classification_cis,
    paired_classification_bootstrap,
)
from lightning_modules.evaluation.calibration import (
    N_BINS,
    expected_calibration_error,
    expected_calibration_error_per_class,
    reliability_bins,
    temperature_scaling,
    top_label,
)
from lightning_modules.evaluation.challenge import isic2019_scores, pauc_above_tpr, pauc_per_class
from lightning_modules.evaluation.delong import delong_ci_per_class, delong_test, delong_test_per_class
from lightning_modules.evaluation.inputs import check_scores
from lightning_modules.evaluation.operating_points import TARGETS, Positive, operating_points
from lightning_modules.evaluation.predictions import Predictions, align
from lightning_modules.evaluation.subgroups import MIN_IMAGES, subgroup_report

#: The keys every :func:`evaluate` report has (``subgroups`` is ``None`` without subgroup fields).
REPORT_KEYS = (
    "n_images", "n_groups", "class_names", "class_counts",
    "auroc", "auroc_ci", "bacc", "bacc_ci", "acc", "acc_ci",
    "auroc_per_class", "auroc_per_class_ci", "auroc_per_class_delong",
    "ece", "ece_per_class", "calibration",
    "operating_points", "pauc_tpr80", "pauc_tpr80_per_class", "challenge",
    "ci_method", "subgroups",
)


def json_safe(value: Any) -> Any:
    """Plain JSON types all the way down: numpy scalars and arrays become Python ones, NaN and
    infinities become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _val_arrays(val, class_names: Sequence[str]) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``val`` as ``(labels, probs)``: a pair, or :class:`Predictions` (its labelled images)."""
    if val is None:
        return None
    if isinstance(val, Predictions):
        val = val.labelled()
        if list(val.class_names) != list(class_names):
            raise ValueError(f"val: classes {val.class_names} differ from the evaluated {list(class_names)}")
        return val.labels, val.probs
    labels, probs = val
    return check_scores(labels, probs, class_names)


def _binary_positive(class_names: Sequence[str], positive: Positive) -> int:
    """The positive class of a binary task: a single class named in ``positive``, else the second."""
    if positive is not None and not isinstance(positive, Mapping) and len(positive) == 1:
        return list(class_names).index(positive[0])
    return 1


def evaluate(labels, probs, class_names: Sequence[str], groups=None, metadata: Optional[Mapping[str, Sequence]] = None,
             val=None, positive: Positive = None, subgroup_fields: Optional[Sequence[str]] = None,
             bands: Optional[Mapping[str, Sequence[float]]] = None, targets: Sequence[float] = TARGETS,
             subgroup_sensitivity: float = 0.90, min_subgroup_images: int = MIN_IMAGES,
             n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """The whole report of one prediction set (keys: :data:`REPORT_KEYS`).

    ``labels`` (N,) class indices, ``probs`` (N, K), ``groups`` (N,) patient or lesion ids (None:
    images resampled), ``metadata`` field -> N raw values, ``val``: the validation split's
    ``(labels, probs)`` (or :class:`Predictions`) for operating points and temperature scaling,
    ``positive``: class names scored together (e.g. ``["MEL", "BCC", "SCC"]``),
    ``subgroup_fields``: metadata fields reported per value, at the validation threshold reaching
    ``subgroup_sensitivity`` (for the ``positive`` set; else the positive class of a binary task;
    else every class)."""
    labels, probs = check_scores(labels, probs, class_names)
    class_names = list(class_names)
    k = len(class_names)
    val_arrays = _val_arrays(val, class_names)
    cis = classification_cis(labels, probs, class_names, groups, n_boot, seed, level)
    ops = operating_points(labels, probs, class_names, val_arrays, positive, groups, targets, n_boot, seed, level)
    confidence, correct = top_label(labels, probs)
    calibration = {
        "n_bins": N_BINS,
        "method": f"torchmetrics CalibrationError(norm='l1', n_bins={N_BINS}): top-label (multiclass) and "
                  f"one-vs-rest (binary) per class",
        "reliability": reliability_bins(confidence, correct),
        "temperature_scaling": temperature_scaling(*val_arrays, labels, probs) if val_arrays is not None else None,
    }
    binary_positive = _binary_positive(class_names, positive) if k == 2 else None
    subgroups = None
    if subgroup_fields:
        if metadata is None:
            raise ValueError(f"subgroup_fields {list(subgroup_fields)} given but no metadata")
        if not any(math.isclose(t, subgroup_sensitivity) for t in targets):
            raise ValueError(f"subgroup_sensitivity {subgroup_sensitivity} must be one of the targets {list(targets)}")
        if positive:
            wanted = list(positive) if isinstance(positive, Mapping) else ["+".join(positive)]
        else:
            wanted = [class_names[binary_positive]] if k == 2 else list(class_names)
        thresholds = {row["positive"]: ([class_names.index(c) for c in row["classes"]], row["threshold"])
                      for row in ops if row["chosen_on"] == "val" and row["positive"] in wanted
                      and math.isclose(row["target_sensitivity"], subgroup_sensitivity)
                      and row["threshold"] is not None}
        subgroups = subgroup_report(labels, probs, class_names, groups, metadata, subgroup_fields, thresholds, bands,
                                    min_subgroup_images, n_boot, seed, level)
        subgroups["operating_point"] = (
            f"thresholds reaching sensitivity {subgroup_sensitivity:g} on the validation split" if val_arrays is not None
            else "none (no validation predictions)")
    report = {
        "n_images": len(labels),
        "n_groups": cis["n_groups"],
        "class_names": class_names,
        "class_counts": {name: int(np.sum(labels == c)) for c, name in enumerate(class_names)},
        "auroc": cis["auroc"],
        "auroc_ci": cis["auroc_ci"],
        "bacc": cis["bacc"],
        "bacc_ci": cis["bacc_ci"],
        "acc": cis["acc"],
        "acc_ci": cis["acc_ci"],
        "auroc_per_class": cis["auroc_per_class"],
        "auroc_per_class_ci": cis["auroc_per_class_ci"],
        "auroc_per_class_delong": delong_ci_per_class(labels, probs, class_names, level),
        "ece": expected_calibration_error(labels, probs),
        "ece_per_class": expected_calibration_error_per_class(labels, probs, class_names),
        "calibration": calibration,
        "operating_points": ops,
        "pauc_tpr80": (pauc_above_tpr(labels == binary_positive, probs[:, binary_positive])
                       if binary_positive is not None else None),
        "pauc_tpr80_per_class": pauc_per_class(labels, probs, class_names),
        "challenge": {"isic2019": isic2019_scores(labels, probs, class_names),
                      "isic2024": {"positive": class_names[binary_positive] if binary_positive is not None else None}},
        "ci_method": {
            "bootstrap": cis["method"],
            "auroc_per_class_delong": "DeLong (Sun & Xu fast algorithm), normal interval on the AUROC scale clipped to "
                                      "[0, 1] as pROC ci.auc(method='delong'); assumes independent images",
            "operating_points": "threshold chosen on the validation split; test sensitivity/specificity intervals "
                                "by the same bootstrap (threshold held fixed)",
        },
        "subgroups": subgroups,
    }
    report["challenge"]["isic2024"]["pauc_tpr80"] = report["pauc_tpr80"]
    return json_safe(report)


def compare_scores(labels, probs_a, probs_b, class_names: Sequence[str], groups=None, n_boot: int = DEFAULT_N_BOOT,
                   seed: int = 0, level: float = 0.95, positive: Positive = None) -> dict:
    """A vs B on the same images: paired DeLong test per class one-vs-rest (and of the positive
    class for a binary task), paired grouped bootstrap of the macro AUROC, balanced accuracy and
    accuracy differences (A - B)."""
    labels, probs_a = check_scores(labels, probs_a, class_names)
    _, probs_b = check_scores(labels, probs_b, class_names)
    class_names = list(class_names)
    paired = paired_classification_bootstrap(labels, probs_a, probs_b, class_names, groups, n_boot, seed, level)
    binary = None
    if len(class_names) == 2:
        c = _binary_positive(class_names, positive)
        binary = {"positive": class_names[c], **delong_test(labels == c, probs_a[:, c], probs_b[:, c], level)}
    return json_safe({
        "n_images": len(labels),
        "n_groups": paired["n_groups"],
        "class_names": class_names,
        "auroc": paired["auroc"],
        "bacc": paired["bacc"],
        "acc": paired["acc"],
        "delong_per_class": delong_test_per_class(labels, probs_a, probs_b, class_names, level),
        "delong_binary": binary,
        "method": {
            "bootstrap": paired["method"],
            "delong": "paired DeLong test (pROC roc.test(method='delong', paired=TRUE)): difference a - b, "
                      "normal interval, two-sided p; assumes independent images",
        },
    })


def compare(a: Predictions, b: Predictions, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95,
            positive: Positive = None) -> dict:
    """:func:`compare_scores` of two predictions files on their common labelled images, with how
    many images each had that the other lacked."""
    a2, b2, counts = align(a, b)
    keep = np.flatnonzero(a2.labels >= 0) if a2.labels is not None else np.array([], dtype=np.int64)
    if keep.size == 0:
        raise ValueError(f"{a.source or 'a'} vs {b.source or 'b'}: no labelled image in common")
    a2, b2 = a2.take(keep), b2.take(keep)
    result = compare_scores(a2.labels, a2.probs, b2.probs, a2.class_names, a2.groups, n_boot, seed, level, positive)
    return {**result, "a": a.source, "b": b.source, "images": counts}


def evaluate_predictions(pred: Predictions, val: Optional[Predictions] = None, **options) -> dict:
    """:func:`evaluate` of a predictions file's labelled images, with its groups and metadata."""
    pred = pred.labelled()
    return evaluate(pred.labels, pred.probs, pred.class_names, pred.groups, pred.metadata or None, val, **options)


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest of m p-values is
    multiplied by (m - i + 1), then made non-decreasing and capped at 1. ``None`` (or NaN) entries
    stay ``None`` and do not count in m."""
    values = [None if p is None or not math.isfinite(float(p)) else float(p) for p in pvalues]
    for p in values:
        if p is not None and not 0 <= p <= 1:
            raise ValueError(f"holm: p-values must lie in [0, 1], got {p}")
    present = sorted((p, i) for i, p in enumerate(values) if p is not None)
    m = len(present)
    adjusted: list[Optional[float]] = [None] * len(values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
