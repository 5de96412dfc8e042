"""``predictions.csv``: one row per image with its class probabilities (training runs' test and
validation splits, ``experiments.predict``), its patient or lesion group and the raw metadata
fields used for subgroups, so that the file alone can be evaluated again
(``lightning_modules.evaluation.read_predictions`` reads it)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from lightning_modules.utils.atomic_io import atomic_write


def metadata_text(value) -> str:
    """A raw metadata value as a cell: blank when missing, whole numbers without ``.0``."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def write_predictions(path: str | Path, image_ids: Sequence[str], probs: np.ndarray,
                      class_names: Sequence[str], labels: Optional[Sequence[int]] = None,
                      groups: Optional[Sequence[str]] = None,
                      metadata: Optional[Mapping[str, Sequence]] = None) -> Path:
    """``image_id``, ``label`` (when given), ``prediction`` (the most probable class), ``group``
    (when given), ``prob_<class>`` per class, then one column per ``metadata`` field; written
    atomically."""
    metadata = dict(metadata or {})
    clash = [f for f in metadata if f in ("image_id", "label", "prediction", "group", "fold")
             or f.startswith("prob_")]
    if clash:
        raise ValueError(f"metadata field(s) {clash} would clash with the predictions file's own columns")
    for name, column in [("groups", groups), *metadata.items()]:
        if column is not None and len(column) != len(image_ids):
            raise ValueError(f"{name}: {len(column)} values for {len(image_ids)} images")

    def write(handle) -> None:
        writer = csv.writer(handle)
        header = ["image_id"] + (["label"] if labels is not None else []) + ["prediction"]
        header += (["group"] if groups is not None else []) + [f"prob_{name}" for name in class_names]
        writer.writerow(header + list(metadata))
        for i, image_id in enumerate(image_ids):
            row = [image_id] + ([class_names[labels[i]]] if labels is not None else [])
            row.append(class_names[int(np.argmax(probs[i]))])
            row += [groups[i]] if groups is not None else []
            row += [f"{p:.6f}" for p in probs[i]]
            writer.writerow(row + [metadata_text(column[i]) for column in metadata.values()])

    return atomic_write(path, write)
