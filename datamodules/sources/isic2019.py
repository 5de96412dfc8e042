"""ISIC 2019 (dermoscopy): one-hot ``..._GroundTruth.csv`` + ``..._Metadata.csv`` + image folder.

Groups by ``lesion_id``; older images have none, and each of those is its own group (the only
safe choice: nothing says two of them share a lesion).
"""

from __future__ import annotations

from pathlib import Path

from datamodules.records import DatasetError, LesionTable
from datamodules.sources import reading

DATASET = "isic2019"
CLASS_NAMES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"
SITES = [
    "anterior torso", "upper extremity", "posterior torso", "lower extremity", "lateral torso",
    "head/neck", "palms/soles", "oral/genital",
]  # fmt: skip
NUMERIC = ["age_approx"]
CATEGORICAL = {"anatom_site_general": SITES, "sex": ["male", "female"]}
DEFAULT_FEATURES = ["age_approx", "anatom_site_general", "sex"]
SUBGROUP_FIELDS = ["sex", "age_approx", "anatom_site_general"]
IMAGE_FOLDERS = ["ISIC_2019_Training_Input", "images"]
#: The challenge test set: metadata without ``lesion_id`` and no ground truth.
TEST_METADATA = "ISIC_2019_Test_Metadata.csv"
TEST_IMAGE_FOLDERS = ["ISIC_2019_Test_Input", "test"]


def read(data_dir: str | Path) -> LesionTable:
    root = reading.require_dir(DATASET, data_dir)
    gt_path = reading.find_file(DATASET, root, [GROUND_TRUTH])
    meta_path = reading.find_file(DATASET, root, [METADATA])
    truth = reading.read_csv(DATASET, gt_path, ["image", *CLASS_NAMES])
    meta_frame = reading.read_csv(DATASET, meta_path, ["image", "age_approx", "anatom_site_general", "sex"])
    reading.check_nonblank(DATASET, gt_path, truth, "image")
    reading.check_unique(DATASET, gt_path, truth, "image")

    labels = _one_hot_labels(gt_path, truth)
    image_ids = [n.strip() for n in truth["image"].tolist()]
    meta = reading.metadata_by_id(DATASET, gt_path, image_ids, meta_path, meta_frame, "image", NUMERIC, CATEGORICAL)
    paths = reading.ImageIndex(DATASET, root, IMAGE_FOLDERS).resolve_all(gt_path, image_ids)
    lesion_of = dict(zip((n.strip() for n in meta_frame["image"]), meta_frame.get("lesion_id", [""] * len(meta_frame))))
    lesion_ids = [lesion_of[image_id] for image_id in image_ids]
    groups = [
        f"lesion:{lesion.strip()}" if lesion.strip() else f"image:{image_id}"
        for image_id, lesion in zip(image_ids, lesion_ids)
    ]
    records = reading.make_records(image_ids, paths, labels, groups, meta)
    return LesionTable(
        dataset=DATASET,
        csv_path=gt_path,
        class_names=list(CLASS_NAMES),
        records=records,
        numeric_columns=list(NUMERIC),
        categorical_columns=list(CATEGORICAL),
        default_features=list(DEFAULT_FEATURES),
        subgroup_fields=list(SUBGROUP_FIELDS),
    )


def read_unlabeled(data_dir: str | Path) -> LesionTable:
    """``ISIC_2019_Test_Metadata.csv`` + ``ISIC_2019_Test_Input/``, for prediction only."""
    root = reading.require_dir(DATASET, data_dir)
    meta_path = reading.find_file(DATASET, root, [TEST_METADATA])
    frame = reading.read_csv(DATASET, meta_path, ["image", *DEFAULT_FEATURES])
    return reading.unlabeled_table(DATASET, root, meta_path, frame, "image", TEST_IMAGE_FOLDERS, NUMERIC, CATEGORICAL)


def _one_hot_labels(path: Path, truth) -> list[int]:
    """Exactly one of the eight diagnoses must be 1 (UNK is never 1 in the training set)."""
    labels = []
    for i, row in enumerate(truth[CLASS_NAMES + (["UNK"] if "UNK" in truth.columns else [])].itertuples(index=False)):
        values = []
        for column, value in zip(CLASS_NAMES + ["UNK"], row):
            try:
                values.append((column, float(value)))
            except ValueError:
                raise DatasetError(
                    f"{DATASET}: {path} line {reading.line_of(i)}, column '{column}': expected 0.0/1.0, got {value!r}"
                ) from None
        hot = [column for column, v in values if v == 1.0]
        if len(hot) != 1 or hot[0] == "UNK":
            raise DatasetError(
                f"{DATASET}: {path} line {reading.line_of(i)}: expected exactly one of {CLASS_NAMES} "
                f"to be 1.0, found {hot or 'none'}"
            )
        labels.append(CLASS_NAMES.index(hot[0]))
    return labels
