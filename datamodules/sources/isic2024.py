"""ISIC 2024 / SLICE-3D: ``train-metadata.csv`` + ``train-image.hdf5`` (or ``train-image/image/``).

401,059 lesion crops cut from 3D total-body photographs, 393 of them malignant, 1,042 patients,
7 hospitals (``attribution``). Binary ``target`` (benign / malignant), grouped by ``patient_id``.
Files, columns and options are described in ``docs/datasets.md``.

The columns that exist only in the training file (``lesion_id``, ``iddx_*``, ``mel_*``,
``tbp_lv_dnn_lesion_confidence``) describe the diagnosis or were filled in because of it: they are
never parsed, and asking for one as a feature is refused with the reason (``LEAK_COLUMNS``).

``patient_relative=True`` adds each lesion's measurements standardised against the same
patient's lesions (``<column>_patient_z``), the "ugly duckling" cue: a mole unlike the patient's
other moles is suspicious. They are computed from the metadata alone (never the labels) and,
since a patient never spans two splits, never mix splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from datamodules.meta_columns import MetaColumns
from datamodules.records import UNLABELED, DatasetError, LesionTable
from datamodules.sources import reading

DATASET = "isic2024"
CLASS_NAMES = ["benign", "malignant"]
#: ``train-metadata.csv``'s 55 columns, in the file's order.
TRAIN_COLUMNS = [
    "isic_id", "target", "patient_id", "age_approx", "sex", "anatom_site_general", "clin_size_long_diam_mm",
    "image_type", "tbp_tile_type", "tbp_lv_A", "tbp_lv_Aext", "tbp_lv_B", "tbp_lv_Bext", "tbp_lv_C", "tbp_lv_Cext",
    "tbp_lv_H", "tbp_lv_Hext", "tbp_lv_L", "tbp_lv_Lext", "tbp_lv_areaMM2", "tbp_lv_area_perim_ratio",
    "tbp_lv_color_std_mean", "tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_deltaLB",
    "tbp_lv_deltaLBnorm", "tbp_lv_eccentricity", "tbp_lv_location", "tbp_lv_location_simple", "tbp_lv_minorAxisMM",
    "tbp_lv_nevi_confidence", "tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_perimeterMM",
    "tbp_lv_radial_color_std_max", "tbp_lv_stdL", "tbp_lv_stdLExt", "tbp_lv_symm_2axis", "tbp_lv_symm_2axis_angle",
    "tbp_lv_x", "tbp_lv_y", "tbp_lv_z", "attribution", "copyright_license", "lesion_id", "iddx_full", "iddx_1",
    "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence",
]  # fmt: skip
#: Why each training-only column may not be a feature (``test-metadata.csv`` has none of them).
LEAK_COLUMNS = {
    "lesion_id": "set only for lesions singled out for follow-up or biopsy (about 22,000 rows, every malignant one): "
                 "whether it is filled in predicts the label",
    **{c: "the histopathological diagnosis itself" for c in ("iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4",
                                                              "iddx_5")},
    "mel_mitotic_index": "measured on excised melanomas only",
    "mel_thick_mm": "measured on excised melanomas only",
    "tbp_lv_dnn_lesion_confidence": "a lesion-classifier score given for the training images only",
}  # fmt: skip
#: ``test-metadata.csv``'s 44 columns: the training file's without ``target`` and the leak columns.
TEST_COLUMNS = [c for c in TRAIN_COLUMNS if c != "target" and c not in LEAK_COLUMNS]

#: The lesion measurements of the 3D photograph (``tbp_lv_location*`` are categories; ``x, y, z``
#: where on the body the lesion sits).
MEASUREMENTS = [
    "clin_size_long_diam_mm", "tbp_lv_A", "tbp_lv_Aext", "tbp_lv_B", "tbp_lv_Bext", "tbp_lv_C", "tbp_lv_Cext",
    "tbp_lv_H", "tbp_lv_Hext", "tbp_lv_L", "tbp_lv_Lext", "tbp_lv_areaMM2", "tbp_lv_area_perim_ratio",
    "tbp_lv_color_std_mean", "tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_deltaLB",
    "tbp_lv_deltaLBnorm", "tbp_lv_eccentricity", "tbp_lv_minorAxisMM", "tbp_lv_nevi_confidence",
    "tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_perimeterMM", "tbp_lv_radial_color_std_max", "tbp_lv_stdL",
    "tbp_lv_stdLExt", "tbp_lv_symm_2axis", "tbp_lv_symm_2axis_angle",
]  # fmt: skip
POSITION = ["tbp_lv_x", "tbp_lv_y", "tbp_lv_z"]
#: Reported per value by the evaluation (sex, age band, body site, hospital).
SUBGROUP_FIELDS = ["sex", "age_approx", "anatom_site_general", "attribution"]
NUMERIC = ["age_approx", *MEASUREMENTS, *POSITION]
#: The general sites ISIC uses (the 2024 file holds the first five).
SITES = ["anterior torso", "posterior torso", "lower extremity", "upper extremity", "head/neck", "lateral torso",
         "palms/soles", "oral/genital"]  # fmt: skip
#: ``Unknown`` is one of the 21 (8) values; the reading rules make it a missing value.
LOCATIONS = [
    "Head & Neck", "Left Arm", "Left Arm - Lower", "Left Arm - Upper", "Left Leg", "Left Leg - Lower",
    "Left Leg - Upper", "Right Arm", "Right Arm - Lower", "Right Arm - Upper", "Right Leg", "Right Leg - Lower",
    "Right Leg - Upper", "Torso Back", "Torso Back Bottom Third", "Torso Back Middle Third", "Torso Back Top Third",
    "Torso Front", "Torso Front Bottom Half", "Torso Front Top Half", "Unknown",
]  # fmt: skip
LOCATIONS_SIMPLE = ["Head & Neck", "Left Arm", "Left Leg", "Right Arm", "Right Leg", "Torso Back", "Torso Front",
                    "Unknown"]  # fmt: skip
TILE_TYPES = ["3D: XP", "3D: white"]
CATEGORICAL: dict[str, Optional[list[str]]] = {
    "sex": ["male", "female"],
    "anatom_site_general": SITES,
    "tbp_tile_type": TILE_TYPES,
    "tbp_lv_location": LOCATIONS,
    "tbp_lv_location_simple": LOCATIONS_SIMPLE,
    # The hospital (7 in the training file): a split key (--data.group_by=attribution), open vocabulary.
    "attribution": None,
}
DEFAULT_FEATURES = ["age_approx", "sex", "anatom_site_general", "clin_size_long_diam_mm", "tbp_tile_type",
                    *[c for c in NUMERIC if c.startswith("tbp_lv_")]]  # fmt: skip
#: Suffix of the patient-relative version of a measurement.
PATIENT_Z = "_patient_z"
RELATIVE = [f"{c}{PATIENT_Z}" for c in MEASUREMENTS]

METADATA = "train-metadata.csv"
TEST_METADATA = "test-metadata.csv"
HDF5 = "train-image.hdf5"
TEST_HDF5 = "test-image.hdf5"
IMAGE_FOLDERS = ["train-image/image", "train-image", "image"]
TEST_IMAGE_FOLDERS = ["test-image/image", "test-image"]


def read(data_dir: str | Path, patient_relative: bool = False) -> LesionTable:
    """The training set. ``patient_relative``: add the ``<measurement>_patient_z`` features
    (``patient_z_scores``) and use them by default too."""
    if not isinstance(patient_relative, bool):
        raise DatasetError(f"{DATASET}: source option patient_relative must be true or false, got {patient_relative!r}")
    root = reading.require_dir(DATASET, data_dir)
    csv_path = reading.find_file(DATASET, root, [METADATA])
    frame = reading.read_csv(DATASET, csv_path, ["isic_id", "target", "patient_id", *DEFAULT_FEATURES],
                             columns=["isic_id", "target", "patient_id", *NUMERIC, *CATEGORICAL], numeric=NUMERIC)
    for column in ("isic_id", "patient_id"):
        reading.check_nonblank(DATASET, csv_path, frame, column)
        frame[column] = frame[column].str.strip()
    reading.check_unique(DATASET, csv_path, frame, "isic_id")
    frame["target"] = frame["target"].str.strip().map({"0": "benign", "1": "malignant", "0.0": "benign",
                                                       "1.0": "malignant"}).fillna(frame["target"])
    labels = reading.parse_labels(DATASET, csv_path, frame, "target", CLASS_NAMES)
    return _table(root, csv_path, frame, labels, HDF5, IMAGE_FOLDERS, patient_relative)


def read_unlabeled(data_dir: str | Path) -> LesionTable:
    """``test-metadata.csv`` + ``test-image.hdf5`` (or ``test-image/image/``), for prediction only;
    ``prob_malignant`` of the predictions is the challenge's ``target``. The patient-relative
    features are always added, so a model trained with them reads this set too."""
    root = reading.require_dir(DATASET, data_dir)
    csv_path = reading.find_file(DATASET, root, [TEST_METADATA])
    frame = reading.read_csv(DATASET, csv_path, ["isic_id", "patient_id", *DEFAULT_FEATURES],
                             columns=["isic_id", "patient_id", *NUMERIC, *CATEGORICAL], numeric=NUMERIC)
    for column in ("isic_id", "patient_id"):
        reading.check_nonblank(DATASET, csv_path, frame, column)
        frame[column] = frame[column].str.strip()
    reading.check_unique(DATASET, csv_path, frame, "isic_id")
    return _table(root, csv_path, frame, [UNLABELED] * len(frame), TEST_HDF5, TEST_IMAGE_FOLDERS, True)


def _table(root: Path, csv_path: Path, frame, labels: list[int], hdf5_name: str, folders: list[str],
           patient_relative: bool) -> LesionTable:
    image_ids = frame["isic_id"].tolist()
    patients = frame["patient_id"].tolist()
    numbers = {c: reading.parse_number_array(DATASET, csv_path, c, frame[c]) for c in NUMERIC if c in frame.columns}
    categories = {c: reading.parse_category_column(DATASET, csv_path, c, frame[c], vocabulary)
                  for c, vocabulary in CATEGORICAL.items() if c in frame.columns}
    numeric = list(NUMERIC)
    if patient_relative:
        numbers.update(patient_z_scores({c: numbers[c] for c in MEASUREMENTS if c in numbers}, patients))
        numeric += RELATIVE
    meta = MetaColumns(numbers, categories).rows()
    hdf5 = root / hdf5_name
    if hdf5.is_file():
        reading.check_hdf5_keys(DATASET, csv_path, hdf5, image_ids)
        paths, keys = [hdf5] * len(image_ids), image_ids
    else:
        paths = reading.ImageIndex(DATASET, root, [hdf5_name, *folders]).resolve_all(csv_path, image_ids)
        keys = None
    group_of = {p: f"patient:{p}" for p in set(patients)}  # one string per patient, not per lesion
    records = reading.make_records(image_ids, paths, labels, [group_of[p] for p in patients], meta, keys=keys)
    return LesionTable(
        dataset=DATASET,
        csv_path=csv_path,
        class_names=list(CLASS_NAMES) if labels and labels[0] != UNLABELED else [],
        records=records,
        numeric_columns=numeric,
        categorical_columns=list(CATEGORICAL),
        default_features=[*DEFAULT_FEATURES, *(RELATIVE if patient_relative else [])],
        refused_features=dict(LEAK_COLUMNS),
        subgroup_fields=list(SUBGROUP_FIELDS),
    )


def patient_z_scores(columns: dict[str, np.ndarray], patients: list[str]) -> dict[str, np.ndarray]:
    """``<column>_patient_z`` of every column (float arrays, NaN = missing): ``(v - mean) / std``
    over the same patient's lesions that have a value (population std, the lesion itself
    included).

    Missing (NaN) where the lesion has no value or the patient has fewer than two lesions with one
    (there is nothing to compare with: the encoder's missing indicator says so); 0 where all of the
    patient's values are equal (the lesion does not stand out).
    """
    patient = pd.factorize(np.asarray(patients, dtype=object))[0]
    out = {}
    for name, values in columns.items():
        v = np.asarray(values, dtype=np.float64)
        present = ~np.isnan(v)
        count = np.bincount(patient, weights=present, minlength=patient.max() + 1)
        total = np.bincount(patient, weights=np.where(present, v, 0.0), minlength=len(count))
        mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        squares = np.bincount(patient, weights=np.where(present, (v - mean[patient]) ** 2, 0.0), minlength=len(count))
        std = np.sqrt(np.divide(squares, count, out=np.zeros_like(squares), where=count > 0))
        # Equal values leave a rounding residue in the std, not 0: compare with the values' scale.
        spread = std > 1e-9 * np.maximum(1.0, np.abs(mean))
        z = np.divide(v - mean[patient], std[patient], out=np.zeros_like(v), where=spread[patient])
        out[f"{name}{PATIENT_Z}"] = np.where(present & (count[patient] >= 2), z, np.nan)
    return out
