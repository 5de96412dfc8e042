"""Several models, each trained with several seeds and tested on the same images: one interval per
model and each model's paired difference from the best, Holm-corrected across the table.

The quantity compared is a model's **seed-averaged** score: the mean over its seeds of the macro
AUROC (balanced accuracy, accuracy) on the test images, the number a "mean over seeds" table
reports. Its uncertainty from the finite test set is estimated by the patient bootstrap: each
resample draws the patients once, and every seed of every model is scored on that same resample
(patients resampled jointly for all models), so

* a model's interval is the percentile interval of its seed-averaged score over the resamples;
* the difference ``model - best`` is computed within each resample, so that what the models share
  (the same hard and easy patients) cancels: its percentile interval and two-sided bootstrap p
  (as :func:`~lightning_modules.evaluation.bootstrap.bootstrap_p_value`) are paired;
* the best model is the one with the highest seed-averaged macro AUROC on the test images
  themselves; the p-values of the others against it form one family per metric, adjusted by
  Holm's step-down method (:func:`~lightning_modules.evaluation.report.holm`).

The seeds enter as repeated measurements on the same images, not as extra images: the interval
covers test-set sampling of the seed-averaged score, while the spread between seeds (training
noise) is the separate standard deviation of the table. Choosing the best on the same test images
favours it slightly, so a difference from it is a conservative, not an unbiased, contrast.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from lightning_modules.evaluation.bootstrap import (
    DEFAULT_N_BOOT,
    ClassificationMetrics,
    GroupBootstrap,
    bootstrap_p_value,
    percentile_interval,
    to_float,
)
from lightning_modules.evaluation.inputs import check_scores
from lightning_modules.evaluation.predictions import Predictions, PredictionsError, align
from lightning_modules.evaluation.report import holm, json_safe

METRICS = ("auroc", "bacc", "acc")


def compare_model_scores(labels, probs: Mapping[str, Sequence[np.ndarray]], class_names: Sequence[str], groups=None,
                         n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """``probs``: model name -> one ``(N, K)`` array per seed, all on the same ``labels``. Returns
    ``models`` (per model: ``seeds``, and per metric the seed-averaged value, ``<metric>_ci`` and
    ``vs_best`` with ``difference`` (model - best), ``ci``, ``p``, ``p_holm``), ``best``,
    ``n_images``, ``n_groups`` and ``method``."""
    if not probs:
        raise ValueError("compare_model_scores: no model given")
    labels, _ = check_scores(labels, next(iter(probs.values()))[0], class_names)
    boot = GroupBootstrap(groups, len(labels), n_boot, seed)
    scorers = {}
    for name, seeds in probs.items():
        if len(seeds) == 0:
            raise ValueError(f"compare_model_scores: model {name!r} has no predictions")
        scorers[name] = [ClassificationMetrics(labels, check_scores(labels, p, class_names)[1], boot.codes,
                                               boot.n_groups) for p in seeds]  # fmt: skip

    def averaged(weights: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name, seeds in scorers.items():
            scores = [score(weights) for score in seeds]
            for metric in METRICS:
                out[f"{name}/{metric}"] = np.mean([s[metric] for s in scores], axis=0)
        return out

    point, draws = averaged(boot.ones()), boot.collect(averaged)
    value = lambda name, metric: to_float(point[f"{name}/{metric}"][0])  # noqa: E731
    ranked = [n for n in probs if value(n, "auroc") is not None]
    best = max(ranked, key=lambda n: value(n, "auroc")) if ranked else None
    models = {name: {"seeds": len(seeds)} for name, seeds in probs.items()}
    for name, row in models.items():
        for metric in METRICS:
            row[metric] = value(name, metric)
            row[f"{metric}_ci"] = percentile_interval(draws[f"{name}/{metric}"], level)
        row["vs_best"] = None if best is None or name == best else {}
    others = [name for name in probs if models[name]["vs_best"] is not None]
    for metric in METRICS:
        for name in others:
            difference = draws[f"{name}/{metric}"] - draws[f"{best}/{metric}"]
            models[name]["vs_best"][metric] = {
                "difference": to_float(point[f"{name}/{metric}"][0] - point[f"{best}/{metric}"][0]),
                "ci": percentile_interval(difference, level), "p": bootstrap_p_value(difference)}
        adjusted = holm([models[name]["vs_best"][metric]["p"] for name in others])
        for name, p in zip(others, adjusted):
            models[name]["vs_best"][metric]["p_holm"] = p
    method = (f"seed-averaged score (mean over each model's seeds) on the same {len(labels)} test images; "
              + boot.method(level) + ", the same resamples for every seed of every model (patients drawn jointly); "
              f"difference: model minus the best (highest seed-averaged macro AUROC), percentile interval and "
              f"two-sided bootstrap p; p_holm: Holm-adjusted over the models compared with the best, per metric")
    return json_safe({"models": models, "best": best, "n_images": len(labels), "n_groups": boot.n_groups,
                      "method": method})


def compare_models(predictions: Mapping[str, Sequence[Predictions]], n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                   level: float = 0.95) -> dict:
    """:func:`compare_model_scores` of predictions files (model name -> one per seed) on the labelled
    images every file has, in the first file's order and class order; ``images`` counts them."""
    files = [p for seeds in predictions.values() for p in seeds]
    if not files:
        raise ValueError("compare_models: no predictions file given")
    first = files[0]
    common = set(first.image_ids)
    for other in files[1:]:
        common &= set(other.image_ids)
    if not common:
        raise PredictionsError("compare_models: the predictions files have no image in common")
    keep = [i for i, image_id in enumerate(first.image_ids) if image_id in common]
    reference = first.take(keep)
    aligned = {name: [align(reference, p)[1] for p in seeds] for name, seeds in predictions.items()}
    labelled = np.flatnonzero(reference.labels >= 0) if reference.labels is not None else np.array([], dtype=int)
    for seeds in aligned.values():
        for p in seeds:
            if p.labels is not None:
                labelled = np.intersect1d(labelled, np.flatnonzero(p.labels >= 0))
    if labelled.size == 0:
        raise PredictionsError("compare_models: no labelled image in common")
    reference = reference.take(labelled)
    groups = next((p.groups for seeds in aligned.values() for p in seeds if p.groups is not None), None)
    groups = [groups[i] for i in labelled] if groups is not None else None
    probs = {name: [p.probs[labelled] for p in seeds] for name, seeds in aligned.items()}
    result = compare_model_scores(reference.labels, probs, reference.class_names, groups, n_boot, seed, level)
    return {**result, "images": {"common": int(labelled.size), "per_file": [len(p) for p in files]}}
