"""ISIC 2020 / SIIM-ISIC Melanoma: ``train.csv`` + ``jpeg/train/*.jpg`` (or a pre-resized folder).

Groups by ``patient_id``. ``task="target"`` (default) is the challenge's benign/malignant task;
``task="diagnosis"`` uses the nine diagnosis strings as classes.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.records import DatasetError, LesionTable
from datamodules.sources import reading

DATASET = "isic2020"
TARGET_CLASSES = ["benign", "malignant"]
DIAGNOSIS_CLASSES = [
    "unknown", "nevus", "melanoma", "seborrheic keratosis", "lentigo NOS", "lichenoid keratosis",
    "solar lentigo", "cafe-au-lait macule", "atypical melanocytic proliferation",
]  # fmt: skip
SITES = ["head/neck", "upper extremity", "lower extremity", "torso", "palms/soles", "oral/genital"]
NUMERIC = ["age_approx"]
CATEGORICAL = {"anatom_site_general_challenge": SITES, "sex": ["male", "female"]}
DEFAULT_FEATURES = ["age_approx", "anatom_site_general_challenge", "sex"]
SUBGROUP_FIELDS = ["sex", "age_approx", "anatom_site_general_challenge"]
REFUSED = {column: "it is the label in words" for column in ("diagnosis", "benign_malignant")}
IMAGE_FOLDERS = ["jpeg/train", "train", "images"]
TEST_IMAGE_FOLDERS = ["jpeg/test", "test"]


def read(data_dir: str | Path, task: str = "target") -> LesionTable:
    root = reading.require_dir(DATASET, data_dir)
    csv_path = reading.find_file(DATASET, root, ["train.csv"])
    if task == "target":
        label_column, class_names = "target", TARGET_CLASSES
    elif task == "diagnosis":
        label_column, class_names = "diagnosis", DIAGNOSIS_CLASSES
    else:
        raise DatasetError(f"{DATASET}: task must be 'target' or 'diagnosis', got {task!r}")
    frame = reading.read_csv(DATASET, csv_path, ["image_name", "patient_id", label_column, *DEFAULT_FEATURES])
    for column in ("image_name", "patient_id"):
        reading.check_nonblank(DATASET, csv_path, frame, column)
    reading.check_unique(DATASET, csv_path, frame, "image_name")
    if task == "target":
        # target is 0/1; map to the class names so the shared label parser reports bad rows.
        mapping = {"0": "benign", "1": "malignant", "0.0": "benign", "1.0": "malignant"}
        frame = frame.assign(target=[mapping.get(v.strip(), v) for v in frame["target"].tolist()])
    labels = reading.parse_labels(DATASET, csv_path, frame, label_column, class_names)
    meta = reading.parse_metadata(DATASET, csv_path, frame, NUMERIC, CATEGORICAL)
    image_ids = [v.strip() for v in frame["image_name"].tolist()]
    paths = reading.ImageIndex(DATASET, root, IMAGE_FOLDERS).resolve_all(csv_path, image_ids)
    groups = [f"patient:{g.strip()}" for g in frame["patient_id"].tolist()]
    records = reading.make_records(image_ids, paths, labels, groups, meta)
    return LesionTable(
        dataset=DATASET,
        csv_path=csv_path,
        class_names=list(class_names),
        records=records,
        numeric_columns=list(NUMERIC),
        categorical_columns=list(CATEGORICAL),
        default_features=list(DEFAULT_FEATURES),
        refused_features=dict(REFUSED),
        subgroup_fields=list(SUBGROUP_FIELDS),
    )


def read_unlabeled(data_dir: str | Path) -> LesionTable:
    """``test.csv`` (the first five columns of ``train.csv``) + ``jpeg/test/``, for prediction
    only; ``prob_malignant`` of the predictions is the challenge's ``target``."""
    root = reading.require_dir(DATASET, data_dir)
    csv_path = reading.find_file(DATASET, root, ["test.csv"])
    frame = reading.read_csv(DATASET, csv_path, ["image_name", *DEFAULT_FEATURES])
    return reading.unlabeled_table(DATASET, root, csv_path, frame, "image_name", TEST_IMAGE_FOLDERS, NUMERIC,
                                   CATEGORICAL)
