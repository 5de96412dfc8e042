"""ISIC 2017 (the AttnMel paper's data), as the challenge ships its three parts.

Each part ``<part>`` (``Training``, ``Validation``, ``Test_v2``) is ``ISIC-2017_<part>_Data/`` (the
JPEGs, the ``..._Data_metadata.csv`` with age and sex, and a ``<id>_superpixels.png`` label map per
image, which is not a photo and is never read), ``ISIC-2017_<part>_Part1_GroundTruth/`` (the lesion
masks, ``<id>_segmentation.png``) and ``ISIC-2017_<part>_Part3_GroundTruth.csv`` (the labels).
Every part present is read; each record keeps its part as ``official_split`` (``--data.split=official``,
the paper's protocol). The images carry no patient or lesion id, so each image is its own group.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.records import DatasetError, LesionRecord, LesionTable
from datamodules.sources import reading

DATASET = "isic2017"
#: The challenge's parts, as spelt in its file names, and the split each one is.
PARTS = {"Training": "train", "Validation": "val", "Test_v2": "test"}
#: ``task: diagnosis`` (default): the challenge's three classes; neither flag set is a nevus.
DIAGNOSIS_CLASSES = ["melanoma", "seborrheic_keratosis", "nevus"]
#: ``task: melanoma``: melanoma against the rest (AttnMel's task).
MELANOMA_CLASSES = ["non-melanoma", "melanoma"]
TASKS = {"diagnosis": DIAGNOSIS_CLASSES, "melanoma": MELANOMA_CLASSES}
NUMERIC = ["age_approximate"]
CATEGORICAL = {"sex": ["male", "female"]}
DEFAULT_FEATURES = ["age_approximate", "sex"]
SUBGROUP_FIELDS = ["sex", "age_approximate"]
LABEL_COLUMNS = ["image_id", "melanoma", "seborrheic_keratosis"]


def ground_truth_name(part: str) -> str:
    return f"ISIC-2017_{part}_Part3_GroundTruth.csv"


def read(data_dir: str | Path, task: str = "diagnosis") -> LesionTable:
    root = reading.require_dir(DATASET, data_dir)
    if task not in TASKS:
        raise DatasetError(f"{DATASET}: task must be one of {list(TASKS)}, got {task!r}")
    parts = [part for part in PARTS if (root / ground_truth_name(part)).is_file()]
    if not parts:
        raise DatasetError(f"{DATASET}: none of {[ground_truth_name(p) for p in PARTS]} found in {root}")
    records: list[LesionRecord] = []
    for part in parts:
        records += _read_part(root, part, task)
    seen: dict[str, str] = {}
    for record in records:
        if seen.setdefault(record.image_id, record.official_split) != record.official_split:
            raise DatasetError(f"{DATASET}: {record.image_id} is listed in the {seen[record.image_id]} and the "
                               f"{record.official_split} ground truth")
    return LesionTable(
        dataset=DATASET,
        csv_path=root / ground_truth_name(parts[0]),
        class_names=list(TASKS[task]),
        records=records,
        numeric_columns=list(NUMERIC),
        categorical_columns=list(CATEGORICAL),
        default_features=list(DEFAULT_FEATURES),
        refused_features={c: "it is the label" for c in LABEL_COLUMNS[1:]},
        subgroup_fields=list(SUBGROUP_FIELDS),
    )


def _read_part(root: Path, part: str, task: str) -> list[LesionRecord]:
    gt_path = root / ground_truth_name(part)
    data = f"ISIC-2017_{part}_Data"
    truth = reading.read_csv(DATASET, gt_path, LABEL_COLUMNS)
    reading.check_nonblank(DATASET, gt_path, truth, "image_id")
    reading.check_unique(DATASET, gt_path, truth, "image_id")
    melanoma = reading.parse_flags(DATASET, gt_path, truth, "melanoma")
    keratosis = reading.parse_flags(DATASET, gt_path, truth, "seborrheic_keratosis")
    both = [reading.line_of(i) for i, m, k in zip(truth.index, melanoma, keratosis) if m and k]
    if both:
        raise DatasetError(f"{DATASET}: {gt_path} line(s) {both[:10]}: melanoma and seborrheic_keratosis are both 1; "
                           "at most one may be")
    if task == "melanoma":
        labels = [int(m) for m in melanoma]
    else:
        labels = [0 if m else 1 if k else 2 for m, k in zip(melanoma, keratosis)]
    meta_name = f"{data}_metadata.csv"
    meta_path = reading.find_file(DATASET, root, [f"{data}/{meta_name}", meta_name])
    meta_frame = reading.read_csv(DATASET, meta_path, ["image_id", *DEFAULT_FEATURES])
    image_ids = [v.strip() for v in truth["image_id"].tolist()]
    meta = reading.metadata_by_id(DATASET, gt_path, image_ids, meta_path, meta_frame, "image_id", NUMERIC,
                                  CATEGORICAL)
    paths = reading.ImageIndex(DATASET, root, [data]).resolve_all(gt_path, image_ids)
    masks = reading.mask_paths(DATASET, root, [f"ISIC-2017_{part}_Part1_GroundTruth"], gt_path,
                               [f"{i}_segmentation" for i in image_ids])
    groups = [f"image:{image_id}" for image_id in image_ids]
    return reading.make_records(image_ids, paths, labels, groups, meta, masks,
                                official_splits=[PARTS[part]] * len(image_ids))
