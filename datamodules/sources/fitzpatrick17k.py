"""Fitzpatrick17k (Groh et al. 2021): ``fitzpatrick17k.csv`` + the images, which each user downloads
from the ``url`` column and saves as ``<md5hash>.jpg``.

16,577 clinical photos from two dermatology atlases, each with a Fitzpatrick skin type
(``fitzpatrick_scale`` 1-6, ``-1`` unknown): the evaluation report's default subgroup. Some URLs
are dead, so some rows never get an image: they are listed in an error, or with
``--data.allow_missing_images=true`` (the reader's ``allow_missing_images``) dropped with a warning that counts them. ``task:
three_partition`` (default): benign / malignant / non-neoplastic; ``nine_partition``; ``label``:
the 114 conditions. No patient ids: each image is its own group.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from datamodules.records import DatasetError, LesionTable
from datamodules.sources import reading

DATASET = "fitzpatrick17k"
CSV = "fitzpatrick17k.csv"
TASKS = {
    "three_partition": ("three_partition_label", ["benign", "malignant", "non-neoplastic"]),
    "nine_partition": ("nine_partition_label", [
        "benign dermal", "benign epidermal", "benign melanocyte", "genodermatoses", "inflammatory",
        "malignant cutaneous lymphoma", "malignant dermal", "malignant epidermal", "malignant melanoma",
    ]),
    "label": ("label", None),  # the conditions, as many as the file names
}  # fmt: skip
SKIN_TYPES = ["1", "2", "3", "4", "5", "6"]
#: The dermatologists' type and the one a crowd of annotators gave; ``-1`` (unknown) is missing.
CATEGORICAL = {"fitzpatrick_scale": SKIN_TYPES, "fitzpatrick_centaur": SKIN_TYPES}
#: Skin type is the default feature as PAD-UFES-20's ``fitspatrick`` is MetaBlock's; the dataset's
#: paper trained on images alone (``--data.meta_features=[]``).
DEFAULT_FEATURES = ["fitzpatrick_scale"]
SUBGROUP_FIELDS = ["fitzpatrick_scale"]
REFUSED = {
    **{column: "it is the label, or a coarser grouping of it" for column, _ in TASKS.values()},
    "qc": "a label-quality note written by dermatologists after seeing the diagnosis",
}


def read(data_dir: str | Path, task: str = "three_partition", allow_missing_images: bool = False) -> LesionTable:
    root = reading.require_dir(DATASET, data_dir)
    if task not in TASKS:
        raise DatasetError(f"{DATASET}: task must be one of {list(TASKS)}, got {task!r}")
    label_column, class_names = TASKS[task]
    csv_path = reading.find_file(DATASET, root, [CSV])
    frame = reading.read_csv(DATASET, csv_path, ["md5hash", "fitzpatrick_scale", label_column, "url"])
    reading.check_nonblank(DATASET, csv_path, frame, "md5hash")
    reading.check_unique(DATASET, csv_path, frame, "md5hash")
    for column in CATEGORICAL:
        if column in frame.columns:
            frame[column] = ["" if v.strip() == "-1" else v for v in frame[column]]
    index = reading.ImageIndex(DATASET, root, ["."])
    found = [index.find(v.strip()) is not None for v in frame["md5hash"]]
    if not all(found):
        frame = _without_missing(frame, found, csv_path, index, allow_missing_images)
    if class_names is None:
        class_names = sorted({v.strip() for v in frame[label_column] if not reading.is_missing(v)})
    labels = reading.parse_labels(DATASET, csv_path, frame, label_column, class_names)
    meta = reading.parse_metadata(DATASET, csv_path, frame, [], CATEGORICAL)
    names = [v.strip() for v in frame["md5hash"].tolist()]
    lines = reading.lines_of(frame)
    paths = index.resolve_all(csv_path, names, lines)
    groups = [f"image:{name}" for name in names]
    return LesionTable(
        dataset=DATASET,
        csv_path=csv_path,
        class_names=list(class_names),
        records=reading.make_records(names, paths, labels, groups, meta, lines=lines),
        numeric_columns=[],
        categorical_columns=[c for c in CATEGORICAL if c in frame.columns],
        default_features=list(DEFAULT_FEATURES),
        refused_features=dict(REFUSED),
        subgroup_fields=list(SUBGROUP_FIELDS),
    )


def _without_missing(frame, found: list[bool], csv_path: Path, index: reading.ImageIndex, allow: bool):
    """``frame`` without the rows whose image is not on disk, with a warning when ``allow``; an
    error listing them (count, first few hashes and URLs) otherwise."""
    missing = frame[[not f for f in found]]
    if not allow:
        shown = "; ".join(f"{row.md5hash} (line {reading.line_of(i)}, {row.url or 'no url'})"
                          for i, row in missing.head(5).iterrows())
        raise DatasetError(
            f"{DATASET}: {len(missing)} of {len(frame)} images listed in {csv_path} are not under "
            f"{[str(p) for p in index.searched]} (never downloaded: dead links?): {shown}"
            f"{'; ...' if len(missing) > 5 else ''}. Download them (saved as <md5hash>.jpg), or pass "
            "--data.allow_missing_images=true to train on the others"
        )
    warnings.warn(f"{DATASET}: {len(missing)} of {len(frame)} images listed in {csv_path} were never downloaded; "
                  f"their rows are left out (allow_missing_images)", stacklevel=3)
    return frame[found]
