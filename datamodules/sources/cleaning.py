"""Whole-table steps between reading a dataset and splitting it, chosen by the datamodule's
options: dropping classes too rare to split (``min_class_images``) and decoding every image up
front (``verify_images``), so bad files stop a run before training starts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.dataset import load_rgb
from datamodules.records import DatasetError, LesionTable


def drop_rare_classes(table: LesionTable, min_images: int) -> LesionTable:
    """``table`` without the classes that have fewer than ``min_images`` images, the rest
    relabelled in order; the dropped classes and image counts are reported."""
    counts = np.bincount([r.label for r in table.records], minlength=len(table.class_names))
    keep = [k for k, n in enumerate(counts) if n >= min_images]
    dropped = {table.class_names[k]: int(counts[k]) for k in range(len(counts)) if counts[k] < min_images}
    if not dropped:
        return table
    rank_zero_warn(
        f"{table.dataset}: dropped {sum(dropped.values())} image(s) of {len(dropped)} class(es) with fewer than "
        f"{min_images} images: {dropped}"
    )
    new_label = {old: new for new, old in enumerate(keep)}
    records = [replace(r, label=new_label[r.label]) for r in table.records if r.label in new_label]
    return replace(table, class_names=[table.class_names[k] for k in keep], records=records)


def verify_images(table: LesionTable) -> None:
    """Decode every image; raise once, listing every unreadable file with its CSV line."""
    bad = []
    for record in table.records:
        try:
            load_rgb(record.image_path, table.dataset, record.line, key=record.image_key)
        except DatasetError as err:
            bad.append(str(err))
    if bad:
        raise DatasetError(f"{table.dataset}: {len(bad)} unreadable image(s):\n  " + "\n  ".join(bad[:20]))
