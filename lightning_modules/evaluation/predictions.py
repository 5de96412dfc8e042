"""Predictions files: read one (ours or an external model's, same columns) and align two on the
images they share, so any file can be evaluated and any two compared.

Columns (one row per image; see ``docs/evaluation.md``):

* ``image_id`` (required, unique);
* ``prob_<class>`` (required, at least two): the class probabilities, in [0, 1]; the class names
  and their order come from these columns;
* ``label`` (optional): the true class name; blank (or ``UNK``, ``unknown``, ...) marks an
  unlabelled image, which evaluation leaves out;
* ``prediction`` (optional): the predicted class; informational, evaluation uses the argmax of
  the probabilities;
* ``group`` (optional): patient or lesion id, the unit the bootstrap resamples; without it every
  image is its own group (image-level intervals, too narrow when a patient has several images);
* ``fold`` (optional): the cross-validation fold that predicted the image;
* any other column: raw metadata (e.g. ``fitspatrick``, ``age``, ``sex``), kept as text for
  subgroup reports.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.sources.reading import is_missing

PROB_PREFIX = "prob_"
KNOWN_COLUMNS = ("image_id", "label", "prediction", "group", "fold")
#: Rows whose probabilities sum further than this from 1 are reported (6-decimal rounding of
#: eight classes is off by at most 4e-6).
SUM_TOLERANCE = 1e-3


class PredictionsError(ValueError):
    """Bad predictions file: the message names the file and, where there is one, the line and column."""


@dataclass
class Predictions:
    image_ids: list[str]
    class_names: list[str]
    #: (N, K) float64.
    probs: np.ndarray
    #: (N,) class indices, -1 for an unlabelled image; ``None`` when the file has no ``label`` column.
    labels: Optional[np.ndarray] = None
    groups: Optional[list[str]] = None
    #: Raw metadata columns: name -> one value per image (``None`` where blank).
    metadata: dict[str, list[Optional[str]]] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(self.image_ids)

    def take(self, index) -> "Predictions":
        """The rows at ``index`` (an int array), in that order."""
        index = np.asarray(index, dtype=np.int64)
        return Predictions(
            image_ids=[self.image_ids[i] for i in index],
            class_names=list(self.class_names),
            probs=self.probs[index],
            labels=None if self.labels is None else self.labels[index],
            groups=None if self.groups is None else [self.groups[i] for i in index],
            metadata={k: [v[i] for i in index] for k, v in self.metadata.items()},
            source=self.source,
        )

    def labelled(self) -> "Predictions":
        """The images with a label (an error if there are none)."""
        if self.labels is None or not (self.labels >= 0).any():
            raise PredictionsError(f"{self.source or 'predictions'}: no labelled image (a 'label' column with class "
                                   f"names is needed to evaluate)")
        return self.take(np.flatnonzero(self.labels >= 0))


def read_predictions(path: str | Path) -> Predictions:
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as err:
        raise PredictionsError(f"cannot read predictions file {path}: {err}") from err
    with handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if "image_id" not in header:
            raise PredictionsError(f"{path}: no 'image_id' column; the header is {header}")
        prob_columns = [h for h in header if h.startswith(PROB_PREFIX)]
        class_names = [h[len(PROB_PREFIX):] for h in prob_columns]
        if len(class_names) < 2:
            raise PredictionsError(f"{path}: needs at least two '{PROB_PREFIX}<class>' columns, found {prob_columns}")
        duplicated = sorted({h for h in header if header.count(h) > 1})
        if duplicated:
            raise PredictionsError(f"{path}: column(s) {duplicated} appear more than once")
        at = {h: i for i, h in enumerate(header)}
        meta_columns = [h for h in header if h not in KNOWN_COLUMNS and not h.startswith(PROB_PREFIX)]
        ids, probs, labels, groups, seen = [], [], [], [], {}
        metadata: dict[str, list[Optional[str]]] = {h: [] for h in meta_columns}
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise PredictionsError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}")
            image_id = row[at["image_id"]].strip()
            if not image_id:
                raise PredictionsError(f"{path} line {line}: blank image_id")
            if image_id in seen:
                raise PredictionsError(f"{path} line {line}: image_id {image_id!r} already on line {seen[image_id]}")
            seen[image_id] = line
            ids.append(image_id)
            probs.append([_probability(path, line, column, row[at[column]]) for column in prob_columns])
            if "label" in at:
                labels.append(_label(path, line, row[at["label"]], class_names))
            if "group" in at:
                group = row[at["group"]].strip()
                if not group:
                    raise PredictionsError(f"{path} line {line}, column 'group': blank group id (a missing patient id "
                                           f"would merge unrelated images into one group)")
                groups.append(group)
            for h in meta_columns:
                value = row[at[h]].strip()
                metadata[h].append(None if is_missing(value) else value)
    if not ids:
        raise PredictionsError(f"{path}: no data rows")
    probs_array = np.asarray(probs, dtype=np.float64)
    off = np.flatnonzero(np.abs(probs_array.sum(axis=1) - 1) > SUM_TOLERANCE)
    if off.size:
        warnings.warn(f"{path}: {off.size} row(s) have probabilities that do not sum to 1 (line {seen[ids[off[0]]]}: "
                      f"{probs_array[off[0]].sum():.4f}); AUROC is unaffected, calibration and the argmax-based scores "
                      f"are read as given", stacklevel=2)
    return Predictions(ids, class_names, probs_array, np.asarray(labels, dtype=np.int64) if "label" in at else None,
                       groups if "group" in at else None, metadata, str(path))


def _probability(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PredictionsError(f"{path} line {line}, column {column!r}: expected a probability, got {text!r}") from None
    if not math.isfinite(value) or not -1e-6 <= value <= 1 + 1e-6:
        raise PredictionsError(f"{path} line {line}, column {column!r}: probability {text!r} is outside [0, 1]")
    return min(max(value, 0.0), 1.0)


def _label(path: Path, line: int, text: str, class_names: list[str]) -> int:
    text = text.strip()
    if is_missing(text):
        return -1
    if text not in class_names:
        raise PredictionsError(f"{path} line {line}, column 'label': {text!r} is not one of the classes {class_names} "
                               f"(from the prob_ columns)")
    return class_names.index(text)


def align(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions, dict]:
    """``(a, b, counts)`` restricted to their common image ids, in ``a``'s order; ``b``'s class
    columns put in ``a``'s order. The labels must agree; so must the groups where both files
    have them (a file without groups takes the other's). ``counts``: images only in a, only in
    b, and in both."""
    where = f"{a.source or 'a'} vs {b.source or 'b'}"
    if sorted(a.class_names) != sorted(b.class_names):
        raise PredictionsError(f"{where}: different classes, {a.class_names} vs {b.class_names}")
    position = {image_id: i for i, image_id in enumerate(b.image_ids)}
    common_a = [i for i, image_id in enumerate(a.image_ids) if image_id in position]
    if not common_a:
        raise PredictionsError(f"{where}: no image id in common")
    common_b = [position[a.image_ids[i]] for i in common_a]
    a2, b2 = a.take(common_a), b.take(common_b)
    b2.probs = b2.probs[:, [b.class_names.index(name) for name in a.class_names]]
    if b2.labels is not None:
        b2.labels = np.where(b2.labels >= 0, np.asarray([a.class_names.index(n) for n in b.class_names])[b2.labels], -1)
    b2.class_names = list(a.class_names)
    if a2.labels is not None and b2.labels is not None:
        clash = np.flatnonzero((a2.labels >= 0) & (b2.labels >= 0) & (a2.labels != b2.labels))
        if clash.size:
            i = int(clash[0])
            raise PredictionsError(f"{where}: image {a2.image_ids[i]!r} is labelled {a.class_names[a2.labels[i]]!r} in "
                                   f"one and {a.class_names[b2.labels[i]]!r} in the other ({clash.size} such images)")
    if a2.labels is None or b2.labels is None:
        merged = a2.labels if b2.labels is None else b2.labels
    else:
        merged = np.where(a2.labels >= 0, a2.labels, b2.labels)
    a2.labels = None if merged is None else merged.copy()
    b2.labels = None if merged is None else merged.copy()
    if a2.groups is not None and b2.groups is not None and a2.groups != b2.groups:
        i = next(i for i, (x, y) in enumerate(zip(a2.groups, b2.groups)) if x != y)
        raise PredictionsError(f"{where}: image {a2.image_ids[i]!r} is in group {a2.groups[i]!r} in one and "
                               f"{b2.groups[i]!r} in the other")
    a2.groups = a2.groups if a2.groups is not None else b2.groups
    b2.groups = b2.groups if b2.groups is not None else a2.groups
    counts = {"common": len(common_a), "only_in_a": len(a) - len(common_a), "only_in_b": len(b) - len(common_a)}
    return a2, b2, counts
