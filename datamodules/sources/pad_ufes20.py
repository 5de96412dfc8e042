"""PAD-UFES-20 (smartphone photos): ``metadata.csv`` + ``images/`` (or ``imgs_part_1..3``).

Groups by ``patient_id``: a patient's lesions never straddle two splits.
Default metadata: the 45 one-hot columns of the MetaBlock paper (age, gender, skin-cancer and
cancer history, Fitzpatrick type, region, and the six lesion questions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from datamodules.records import LesionTable
from datamodules.sources import reading

DATASET = "pad_ufes20"
CLASS_NAMES = ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
COLUMNS = [
    "patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age",
    "pesticide", "gender", "skin_cancer_history", "cancer_history", "has_piped_water",
    "has_sewage_system", "fitspatrick", "region", "diameter_1", "diameter_2", "diagnostic", "itch",
    "grew", "hurt", "changed", "bleed", "elevation", "img_id", "biopsed",
]  # fmt: skip
REGIONS = [
    "ABDOMEN", "ARM", "BACK", "CHEST", "EAR", "FACE", "FOOT", "FOREARM", "HAND", "LIP", "NECK",
    "NOSE", "SCALP", "THIGH",
]  # fmt: skip
BOOLEAN = ["True", "False"]
QUESTIONS = ["itch", "grew", "hurt", "changed", "bleed", "elevation"]

NUMERIC = ["age", "diameter_1", "diameter_2"]
CATEGORICAL: dict[str, Optional[list[str]]] = {
    "gender": ["MALE", "FEMALE"],
    "smoke": BOOLEAN,
    "drink": BOOLEAN,
    "pesticide": BOOLEAN,
    "skin_cancer_history": BOOLEAN,
    "cancer_history": BOOLEAN,
    "has_piped_water": BOOLEAN,
    "has_sewage_system": BOOLEAN,
    "background_father": None,  # country names, open vocabulary
    "background_mother": None,
    "fitspatrick": ["1", "2", "3", "4", "5", "6"],
    "region": REGIONS,
    **{q: BOOLEAN for q in QUESTIONS},
}
DEFAULT_FEATURES = [
    "age", "gender", "skin_cancer_history", "cancer_history", "fitspatrick", "region", *QUESTIONS,
]  # fmt: skip
#: What the evaluation report breaks results down by: skin type, sex, age, body region.
SUBGROUP_FIELDS = ["fitspatrick", "gender", "age", "region"]
IMAGE_FOLDERS = ["images", "imgs_part_1", "imgs_part_2", "imgs_part_3"]
REQUIRED = ["patient_id", "lesion_id", "img_id", "diagnostic"]


def read(data_dir: str | Path, mask_folder: Optional[str] = None) -> LesionTable:
    """Read PAD-UFES-20 as distributed. ``mask_folder`` (relative) adds lesion masks by file name."""
    root = reading.require_dir(DATASET, data_dir)
    csv_path = reading.find_file(DATASET, root, ["metadata.csv"])
    frame = reading.read_csv(DATASET, csv_path, REQUIRED)
    reading.check_nonblank(DATASET, csv_path, frame, "img_id")
    reading.check_nonblank(DATASET, csv_path, frame, "patient_id")
    reading.check_unique(DATASET, csv_path, frame, "img_id")
    labels = reading.parse_labels(DATASET, csv_path, frame, "diagnostic", CLASS_NAMES)
    meta = reading.parse_metadata(DATASET, csv_path, frame, NUMERIC, CATEGORICAL)
    image_ids = [v.strip() for v in frame["img_id"].tolist()]
    paths = reading.ImageIndex(DATASET, root, IMAGE_FOLDERS).resolve_all(csv_path, image_ids)
    masks = (reading.mask_paths(DATASET, root, [mask_folder], csv_path, image_ids, required=True)
             if mask_folder is not None else None)
    groups = [f"patient:{p.strip()}" for p in frame["patient_id"].tolist()]
    records = reading.make_records(image_ids, paths, labels, groups, meta, masks)
    present = [c for c in NUMERIC if c in frame.columns], [c for c in CATEGORICAL if c in frame.columns]
    return LesionTable(
        dataset=DATASET,
        csv_path=csv_path,
        class_names=list(CLASS_NAMES),
        records=records,
        numeric_columns=present[0],
        categorical_columns=present[1],
        default_features=list(DEFAULT_FEATURES),
        refused_features={"biopsed": "every cancer in the dataset is biopsied, so it gives the label away"},
        subgroup_fields=[c for c in SUBGROUP_FIELDS if c in present[0] + present[1]],
    )

