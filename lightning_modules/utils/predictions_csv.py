"""``predictions.csv``: one row per image with its class probabilities (training runs' test split,
``experiments.predict``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lightning_modules.utils.atomic_io import atomic_write


def write_predictions(path: str | Path, image_ids: Sequence[str], probs: np.ndarray,
                      class_names: Sequence[str], labels: Optional[Sequence[int]] = None) -> Path:
    """``image_id``, ``label`` (when given), ``prediction`` (the most probable class) and
    ``prob_<class>`` per class; written atomically."""

    def write(handle) -> None:
        writer = csv.writer(handle)
        header = ["image_id"] + (["label"] if labels is not None else []) + ["prediction"]
        writer.writerow(header + [f"prob_{name}" for name in class_names])
        for i, image_id in enumerate(image_ids):
            row = [image_id] + ([class_names[labels[i]]] if labels is not None else [])
            row.append(class_names[int(np.argmax(probs[i]))])
            writer.writerow(row + [f"{p:.6f}" for p in probs[i]])

    return atomic_write(path, write)
