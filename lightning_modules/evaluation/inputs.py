"""Checks shared by every evaluation function: labels, probabilities, class names and group ids
agree in length and range, with an error that names the argument."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def check_scores(labels, probs, class_names: Optional[Sequence[str]] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(labels as int64 (N,), probs as float64 (N, K))``, or a ValueError saying what is wrong."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (images, classes) with at least 2 classes, got shape {probs.shape}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ValueError(f"labels must be (images,) = ({len(probs)},) like probs, got shape {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no images to evaluate (labels and probs are empty)")
    whole = np.issubdtype(labels.dtype, np.integer) or (
        labels.dtype.kind == "f" and bool(np.all(np.isfinite(labels) & (labels == np.round(labels)))))
    if not whole:
        raise ValueError(f"labels must be class indices (integers), got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    k = probs.shape[1]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"class_names has {len(class_names)} names but probs has {k} columns")
    bad = np.flatnonzero((labels < 0) | (labels >= k))
    if bad.size:
        raise ValueError(f"labels must lie in [0, {k}); row {int(bad[0])} has {int(labels[bad[0]])} "
                         f"({bad.size} such rows; unlabelled images cannot be evaluated)")
    if not np.all(np.isfinite(probs)):
        row = int(np.flatnonzero(~np.isfinite(probs).all(axis=1))[0])
        raise ValueError(f"probs must be finite; row {row} is {probs[row].tolist()}")
    return labels, probs


def group_codes(groups, n: int) -> tuple[np.ndarray, int]:
    """``(code (N,) in [0, G), G)``: each image's group as a dense integer. ``None``: every image
    its own group (image-level resampling)."""
    if groups is None:
        return np.arange(n), n
    groups = list(groups)
    if len(groups) != n:
        raise ValueError(f"groups must give one id per image ({n}), got {len(groups)}")
    blank = [i for i, g in enumerate(groups) if g is None or str(g).strip() == "" or g != g]  # g != g: NaN
    if blank:
        raise ValueError(f"groups: image {blank[0]} has no group id ({len(blank)} such images); a missing id would "
                         f"merge unrelated images into one group")
    _, codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    return codes.reshape(-1).astype(np.int64), int(codes.max()) + 1
