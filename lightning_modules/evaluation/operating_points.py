"""Operating points: the sensitivity and specificity a clinician would get at a fixed threshold.

For each class one-vs-rest, and for sets of classes scored by the sum of their probabilities (e.g.
MEL+BCC+SCC as "malignant"), the threshold is chosen on the VALIDATION split: the largest
threshold whose sensitivity there is at least the target (0.80, 0.90, 0.95); an image is called
positive when its score is >= the threshold. That threshold is then applied unchanged to the
evaluated (test) images, whose sensitivity and specificity get grouped-bootstrap intervals (the
test images are resampled; the threshold's own uncertainty from the validation split is not in
them).

The same rule applied to the test images themselves is reported too, labelled ``"chosen_on":
"test"``: it answers "what specificity does this ranking allow at 90 % sensitivity" but is
optimistic as an estimate of deployed performance, so it carries no interval.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from lightning_modules.evaluation.bootstrap import (
    DEFAULT_N_BOOT,
    GroupBootstrap,
    GroupSums,
    percentile_interval,
    safe_ratio,
)
from lightning_modules.evaluation.inputs import check_scores

TARGETS = (0.80, 0.90, 0.95)

Positive = Union[None, Sequence[str], Mapping[str, Sequence[str]]]


def positive_sets(class_names: Sequence[str], positive: Positive = None) -> dict[str, list[int]]:
    """Each class on its own, plus the extra positive sets: ``["MEL", "BCC", "SCC"]`` is one set named
    ``"MEL+BCC+SCC"``; a mapping names several (``{"malignant": [...]}``)."""
    sets = {name: [c] for c, name in enumerate(class_names)}
    if positive is None or len(positive) == 0:
        return sets
    named = dict(positive) if isinstance(positive, Mapping) else {"+".join(positive): list(positive)}
    for name, members in named.items():
        if isinstance(members, str):
            members = [members]
        unknown = [m for m in members if m not in class_names]
        if unknown or not members:
            raise ValueError(f"positive: class(es) {unknown or members} of set {name!r} are not among the classes "
                             f"{list(class_names)}")
        if name in sets and sets[name] != [class_names.index(m) for m in members]:
            raise ValueError(f"positive: the set name {name!r} is already a class name")
        sets[name] = sorted({class_names.index(m) for m in members})
    return sets


def set_scores(labels: np.ndarray, probs: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(positive (N,) bool, score (N,))`` of a set of classes: score = sum of their probabilities."""
    return np.isin(labels, classes), probs[:, list(classes)].sum(axis=1)


def threshold_for_sensitivity(positive, scores, target: float) -> Optional[float]:
    """The largest threshold ``t`` with sensitivity(score >= t) >= ``target``: the
    ceil(target * P)-th largest positive score. ``None`` without positives."""
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(positive, dtype=bool)])[::-1]
    if pos.size == 0:
        return None
    j = max(1, math.ceil(target * pos.size - 1e-9))  # 1e-9: 0.9 * 10 is 9.000000000000002 in floating point
    return float(pos[j - 1])


def sensitivity_specificity(positive, scores, threshold: float) -> tuple[Optional[float], Optional[float]]:
    positive = np.asarray(positive, dtype=bool)
    called = np.asarray(scores, dtype=np.float64) >= threshold
    sens = float(called[positive].mean()) if positive.any() else None
    spec = float((~called[~positive]).mean()) if (~positive).any() else None
    return sens, spec


def operating_points(labels, probs, class_names: Sequence[str], val: Optional[tuple] = None,
                     positive: Positive = None, groups=None, targets: Sequence[float] = TARGETS,
                     n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95) -> list[dict]:
    """Rows, one per (positive set, target, where the threshold was chosen): ``positive`` (name),
    ``classes``, ``target_sensitivity``, ``chosen_on`` ("val" or "test"), ``threshold``,
    ``sensitivity``, ``specificity`` on the evaluated images (with ``_ci`` for "val" rows;
    ``val_sensitivity`` and ``val_specificity`` too), ``n_positive``, ``n_negative``, and a
    ``note`` where a value cannot be given. ``val``: ``(labels, probs)`` of the validation split."""
    labels, probs = check_scores(labels, probs, class_names)
    if val is not None:
        val_labels, val_probs = check_scores(val[0], val[1], class_names)
    sets = positive_sets(list(class_names), positive)
    rows, columns = [], []
    for name, classes in sets.items():
        is_pos, score = set_scores(labels, probs, classes)
        common = {"positive": name, "classes": [class_names[c] for c in classes],
                  "n_positive": int(is_pos.sum()), "n_negative": int((~is_pos).sum())}
        for target in targets:
            if val is not None:
                val_pos, val_score = set_scores(val_labels, val_probs, classes)
                threshold = threshold_for_sensitivity(val_pos, val_score, target)
                row = {**common, "target_sensitivity": float(target), "chosen_on": "val", "threshold": threshold}
                if threshold is None:
                    rows.append({**row, "sensitivity": None, "sensitivity_ci": [None, None], "specificity": None,
                                 "specificity_ci": [None, None], "val_sensitivity": None, "val_specificity": None,
                                 "note": f"no image of {name} in the validation split: no threshold"})
                else:
                    val_sens, val_spec = sensitivity_specificity(val_pos, val_score, threshold)
                    sens, spec = sensitivity_specificity(is_pos, score, threshold)
                    called = score >= threshold
                    columns.append((len(rows), np.column_stack([is_pos & called, is_pos, ~is_pos & ~called, ~is_pos])))
                    rows.append({**row, "sensitivity": sens, "specificity": spec, "val_sensitivity": val_sens,
                                 "val_specificity": val_spec})
            threshold = threshold_for_sensitivity(is_pos, score, target)
            test_row = {**common, "target_sensitivity": float(target), "chosen_on": "test", "threshold": threshold,
                        "sensitivity": None, "specificity": None, "sensitivity_ci": [None, None],
                        "specificity_ci": [None, None],
                        "note": "threshold chosen on the evaluated images themselves: optimistic, no interval"}
            if threshold is not None:
                test_row["sensitivity"], test_row["specificity"] = sensitivity_specificity(is_pos, score, threshold)
            rows.append(test_row)
    if columns:
        boot = GroupBootstrap(groups, len(labels), n_boot, seed)
        sums = GroupSums(np.hstack([c for _, c in columns]).astype(np.float64), boot.codes, boot.n_groups)
        draws = boot.collect(lambda w: {"sums": sums(w)})["sums"]
        for j, (index, _) in enumerate(columns):
            tp, p, tn, n = (draws[:, 4 * j + i] for i in range(4))
            rows[index]["sensitivity_ci"] = percentile_interval(safe_ratio(tp, p), level)
            rows[index]["specificity_ci"] = percentile_interval(safe_ratio(tn, n), level)
    return rows
