"""DDI, Diverse Dermatology Images (Stanford; Daneshjou et al. 2022): ``ddi_metadata.csv`` + the PNGs.

656 biopsy-proven clinical photos, balanced across Fitzpatrick skin types grouped as ``skin_tone``
12 / 34 / 56 (types I-II, III-IV, V-VI): the skin-tone column is the evaluation report's default
subgroup. The images lie beside the CSV as downloaded (or in ``images/``, as the dataset's own
loader wants them). ``task: malignant`` (default): benign / malignant; ``task: disease``: the
biopsy diagnosis strings as classes. ``disease`` is a label, never a feature. The CSV names no
patient, so each image is its own group.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.records import DatasetError, LesionTable
from datamodules.sources import reading

DATASET = "ddi"
CSV = "ddi_metadata.csv"
#: The zip unpacks into this folder; ``data_dir`` may be it or its parent.
FOLDER = "ddidiversedermatologyimages"
MALIGNANT_CLASSES = ["benign", "malignant"]
TASKS = ("malignant", "disease")
#: An older release spells the label column so (1 = malignant).
OLD_MALIGNANT = "malignancy(malig=1)"
CATEGORICAL = {"skin_tone": ["12", "34", "56"]}
#: Skin type is the default feature as PAD-UFES-20's ``fitspatrick`` is MetaBlock's; the dataset's
#: paper trained on images alone (``--data.meta_features=[]``).
DEFAULT_FEATURES = ["skin_tone"]
SUBGROUP_FIELDS = ["skin_tone"]
REFUSED = {
    "disease": "it names the diagnosis, and so whether the lesion is malignant: it is a label, not metadata",
    "malignant": "it is the label",
}


def read(data_dir: str | Path, task: str = "malignant") -> LesionTable:
    root = reading.require_dir(DATASET, data_dir)
    if task not in TASKS:
        raise DatasetError(f"{DATASET}: task must be one of {list(TASKS)}, got {task!r}")
    csv_path = reading.find_file(DATASET, root, [CSV, f"{FOLDER}/{CSV}"])
    frame = reading.read_csv(DATASET, csv_path, ["DDI_ID", "DDI_file", "skin_tone", "disease"])
    if "malignant" not in frame.columns and OLD_MALIGNANT in frame.columns:
        frame["malignant"] = frame[OLD_MALIGNANT]
    if "malignant" not in frame.columns:
        raise DatasetError(f"{DATASET}: {csv_path} lacks required column(s) ['malignant']; "
                           f"it has {list(frame.columns)}")
    for column in ("DDI_ID", "DDI_file"):
        reading.check_nonblank(DATASET, csv_path, frame, column)
        reading.check_unique(DATASET, csv_path, frame, column)
    if task == "malignant":
        class_names = MALIGNANT_CLASSES
        labels = [int(flag) for flag in reading.parse_flags(DATASET, csv_path, frame, "malignant")]
    else:
        class_names = sorted({v.strip() for v in frame["disease"] if not reading.is_missing(v)})
        labels = reading.parse_labels(DATASET, csv_path, frame, "disease", class_names)
    meta = reading.parse_metadata(DATASET, csv_path, frame, [], CATEGORICAL)
    names = [v.strip() for v in frame["DDI_file"].tolist()]
    paths = reading.ImageIndex(DATASET, csv_path.parent, ["."]).resolve_all(csv_path, names)
    groups = [f"image:{Path(name).stem}" for name in names]
    return LesionTable(
        dataset=DATASET,
        csv_path=csv_path,
        class_names=list(class_names),
        records=reading.make_records(names, paths, labels, groups, meta),
        numeric_columns=[],
        categorical_columns=list(CATEGORICAL),
        default_features=list(DEFAULT_FEATURES),
        refused_features=dict(REFUSED),
        subgroup_fields=list(SUBGROUP_FIELDS),
    )
