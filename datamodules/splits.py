"""Patient-grouped, class-stratified K-fold splits (the MetaBlock paper's 5-fold protocol, done
without its patient leak), or the split a dataset ships (``official_indices``).

Every record carries a ``group`` (patient id, or lesion id where there is no patient); all
records of a group land in the same fold. Fold ``fold`` is the test split, fold ``fold + 1``
(mod ``n_folds``) the validation split, the rest the training split, so the five test folds of a
5-fold run cover every image exactly once.

``group_by`` names a metadata column to split by instead (``attribution``: whole hospitals held
out); patients stay whole within it (``split_groups``).
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from datamodules.records import DatasetError, LesionRecord, LesionTable

SPLITS = ("train", "val", "test")
#: ``--data.split``: our grouped folds, or the train / validation / test sets a dataset ships.
SPLIT_MODES = ("folds", "official")
#: The ``group_by`` value of records whose column is blank: they form one group together.
MISSING_VALUE = "<missing>"


def assign_folds(
    labels: Sequence[int], groups: Sequence[str], n_folds: int, seed: int, dataset: str = "dataset",
    what: str = "patient/lesion groups",
) -> np.ndarray:
    """The fold index of every sample; groups never straddle folds; classes spread evenly."""
    labels = np.asarray(labels)
    n_groups = len(set(groups))
    if n_folds < 3:
        raise DatasetError(f"{dataset}: n_folds must be at least 3 (train/val/test), got {n_folds}")
    if n_groups < n_folds:
        raise DatasetError(f"{dataset}: cannot make {n_folds} folds from {n_groups} {what}")
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


def split_groups(records: Sequence[LesionRecord], group_by: Optional[str] = None) -> list[str]:
    """The unit a split keeps whole, per record: its ``group`` (patient, else lesion, else image),
    or with ``group_by`` the value of that metadata column (a blank value is one more value,
    ``<missing>``). Nested: records whose groups share a patient/lesion are merged into one unit
    (named by the sorted values joined with `` + ``), so no patient spans two splits even if the
    column changes within a patient."""
    if group_by is None:
        return [r.group for r in records]
    values = [r.meta.get(group_by) for r in records]
    values = [MISSING_VALUE if v is None else str(v) for v in values]
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_of_group: dict[str, str] = {}
    for record, value in zip(records, values):
        other = first_of_group.setdefault(record.group, value)
        a, b = root(value), root(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for value in parent:
        members.setdefault(root(value), []).append(value)
    names = {r: " + ".join(sorted(m)) for r, m in members.items()}
    return [names[root(v)] for v in values]


def check_group_by(table: LesionTable, group_by: Optional[str]) -> None:
    if group_by is not None and group_by not in table.numeric_columns + table.categorical_columns:
        raise DatasetError(f"--data.group_by: {table.dataset} has no metadata column {group_by!r}; its columns: "
                           f"{table.numeric_columns + table.categorical_columns} (or null: by patient/lesion)")


def split_indices(
    records: Sequence[LesionRecord], fold: int, n_folds: int, seed: int, dataset: str = "dataset",
    group_by: Optional[str] = None,
) -> dict[str, np.ndarray]:
    if not 0 <= fold < n_folds:
        raise DatasetError(f"fold must be in [0, {n_folds - 1}], got {fold}")
    groups = split_groups(records, group_by)
    what = f"'{group_by}' groups" if group_by else "patient/lesion groups"
    folds = assign_folds([r.label for r in records], groups, n_folds, seed, dataset, what)
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
