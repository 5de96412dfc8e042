"""HAM10000: ``HAM10000_metadata.csv`` + images split over ``HAM10000_images_part1/2``, and the
lesion masks (``HAM10000_segmentations_lesion_tschandl/``) when they were downloaded too.

Several images show the same lesion, so splits group by ``lesion_id``. ``dx_type`` (how the
diagnosis was confirmed) is deliberately not a feature: it leaks the label (histopathology is
far more common for malignant lesions).
"""

from __future__ import annotations

from pathlib import Path

from datamodules.records import LesionTable
from datamodules.sources import reading

DATASET = "ham10000"
CLASS_NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
LOCALIZATIONS = [
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
    "lower extremity", "neck", "scalp", "trunk", "upper extremity",
]  # fmt: skip
NUMERIC = ["age"]
CATEGORICAL = {"sex": ["male", "female"], "localization": LOCALIZATIONS}
DEFAULT_FEATURES = ["age", "sex", "localization"]
SUBGROUP_FIELDS = ["sex", "age", "localization"]
REFUSED = {"dx_type": "how the diagnosis was confirmed: histopathology is far more common for malignant lesions, "
                      "so it gives the label away"}
#: The published segmentations (Tschandl et al.), one ``<image_id>_segmentation.png`` per image.
MASK_FOLDERS = ["HAM10000_segmentations_lesion_tschandl"]
IMAGE_FOLDERS = [
    "HAM10000_images_part1", "HAM10000_images_part2", "HAM10000_images_part_1",
    "HAM10000_images_part_2", "HAM10000_images", "images",
]  # fmt: skip


def read(data_dir: str | Path) -> LesionTable:
    root = reading.require_dir(DATASET, data_dir)
    csv_path = reading.find_file(DATASET, root, ["HAM10000_metadata.csv", "HAM10000_metadata"])
    frame = reading.read_csv(DATASET, csv_path, ["lesion_id", "image_id", "dx", *DEFAULT_FEATURES])
    for column in ("lesion_id", "image_id"):
        reading.check_nonblank(DATASET, csv_path, frame, column)
    reading.check_unique(DATASET, csv_path, frame, "image_id")
    labels = reading.parse_labels(DATASET, csv_path, frame, "dx", CLASS_NAMES)
    meta = reading.parse_metadata(DATASET, csv_path, frame, NUMERIC, CATEGORICAL)
    image_ids = [v.strip() for v in frame["image_id"].tolist()]
    paths = reading.ImageIndex(DATASET, root, IMAGE_FOLDERS).resolve_all(csv_path, image_ids)
    masks = reading.mask_paths(DATASET, root, MASK_FOLDERS, csv_path, [f"{i}_segmentation" for i in image_ids])
    groups = [f"lesion:{g.strip()}" for g in frame["lesion_id"].tolist()]
    records = reading.make_records(image_ids, paths, labels, groups, meta, masks)
    return LesionTable(
        dataset=DATASET,
        csv_path=csv_path,
        class_names=list(CLASS_NAMES),
        records=records,
        numeric_columns=list(NUMERIC),
        categorical_columns=list(CATEGORICAL),
        default_features=list(DEFAULT_FEATURES),
        refused_features=dict(REFUSED),
        subgroup_fields=list(SUBGROUP_FIELDS),
    )
