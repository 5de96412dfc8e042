"""Patient-grouped, class-stratified K-fold splits (the MetaBlock paper's 5-fold protocol, done
without its patient leak), or the split a dataset ships (``official_indices``).

Every record carries a ``group`` (patient id, or lesion id where there is no patient); all
records of a group land in the same fold. Fold ``fold`` is the test split, fold ``fold + 1``
(mod ``n_folds``) the validation split, the rest the training split, so the five test folds of a
5-fold run cover every image exactly once.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from datamodules.records import DatasetError, LesionRecord

SPLITS = ("train", "val", "test")
#: ``--data.split``: our grouped folds, or the train / validation / test sets a dataset ships.
SPLIT_MODES = ("folds", "official")


def assign_folds(
    labels: Sequence[int], groups: Sequence[str], n_folds: int, seed: int, dataset: str = "dataset"
) -> np.ndarray:
    """The fold index of every sample; groups never straddle folds; classes spread evenly."""
    labels = np.asarray(labels)
    n_groups = len(set(groups))
    if n_folds < 3:
        raise DatasetError(f"{dataset}: n_folds must be at least 3 (train/val/test), got {n_folds}")
    if n_groups < n_folds:
        raise DatasetError(f"{dataset}: cannot make {n_folds} folds from {n_groups} patient/lesion groups")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1, dtype=int)
    with warnings.catch_warnings():
        # sklearn warns when a rare class has fewer groups than folds; the split is still valid.
        warnings.simplefilter("ignore", UserWarning)
        try:
            for k, (_, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
                folds[test_idx] = k
        except ValueError as err:  # e.g. every class has fewer members than folds
            raise DatasetError(f"{dataset}: cannot make {n_folds} stratified folds: {err}") from err
    return folds


def split_indices(
    records: Sequence[LesionRecord], fold: int, n_folds: int, seed: int, dataset: str = "dataset"
) -> dict[str, np.ndarray]:
    if not 0 <= fold < n_folds:
        raise DatasetError(f"fold must be in [0, {n_folds - 1}], got {fold}")
    folds = assign_folds([r.label for r in records], [r.group for r in records], n_folds, seed, dataset)
    val_fold = (fold + 1) % n_folds
    out = {
        "train": np.flatnonzero((folds != fold) & (folds != val_fold)),
        "val": np.flatnonzero(folds == val_fold),
        "test": np.flatnonzero(folds == fold),
    }
    for name, idx in out.items():
        if len(idx) == 0:
            raise DatasetError(f"{dataset}: the {name} split of fold {fold}/{n_folds} is empty")
    return out


def official_indices(records: Sequence[LesionRecord], dataset: str = "dataset") -> dict[str, np.ndarray]:
    """The distributor's own split, from each record's ``official_split``; every record must have
    one and no split may be empty (a part of the dataset that was not downloaded)."""
    splits = [r.official_split for r in records]
    unknown = sorted({str(s) for s in splits if s not in SPLITS})
    if unknown:
        lines = [r.line for r, s in zip(records, splits) if s not in SPLITS][:5]
        raise DatasetError(f"{dataset}: records without an official split ({unknown}, e.g. CSV lines {lines}); "
                           "--data.split=official needs one for every image")
    out = {name: np.flatnonzero(np.array(splits) == name) for name in SPLITS}
    for name, idx in out.items():
        if len(idx) == 0:
            raise DatasetError(f"{dataset}: the official {name} split has no image (were its files downloaded?)")
    groups = {name: {records[i].group for i in idx} for name, idx in out.items()}
    shared = (groups["train"] & groups["val"]) | (groups["train"] & groups["test"]) | (groups["val"] & groups["test"])
    if shared:
        raise DatasetError(f"{dataset}: the official split puts one patient/lesion group in two splits "
                           f"(e.g. {sorted(shared)[:3]})")
    return out
