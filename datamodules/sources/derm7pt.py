"""Derm7pt (the seven-point checklist dataset, Kawahara et al. 2019): ``release_v0/meta/meta.csv`` +
``release_v0/images/``.

One row per case: a clinical and a dermoscopic photo of one lesion (``clinic`` / ``derm``, paths
relative to ``images/``), the diagnosis, the seven-point criteria and elevation, location and sex.
``image: derm`` (default) or ``image: clinic`` picks the photo; each case is its own group.
``task: grouped`` (default) maps the 20 diagnoses to the dataset paper's five classes, ``task:
diagnosis`` keeps them. ``meta/{train,valid,test}_indexes.csv`` (row numbers of ``meta.csv``) are
the official split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from datamodules.records import DatasetError, LesionTable
from datamodules.sources import reading

DATASET = "derm7pt"
META = "meta.csv"
#: The dataset paper's five classes and the diagnoses each groups (the grouping of its loader,
#: ``ArgenzianoDatasetGroupInfrequent`` in https://github.com/jeremykawahara/derm7pt/blob/7988142a02ad648d61a791dd977da14dd71c807e/derm7pt/dataset.py).
GROUPS = {
    "BCC": ["basal cell carcinoma"],
    "NEV": ["blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus", "recurrent nevus",
            "reed or spitz nevus"],
    "MEL": ["melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
            "melanoma (more than 1.5 mm)", "melanoma metastasis"],
    "MISC": ["dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"],
    "SK": ["seborrheic keratosis"],
}  # fmt: skip
DIAGNOSES = sorted(d for names in GROUPS.values() for d in names)
TASKS = ("grouped", "diagnosis")
IMAGE_COLUMNS = ("derm", "clinic")
CRITERIA = {
    "pigment_network": ["absent", "typical", "atypical"],
    "streaks": ["absent", "regular", "irregular"],
    "pigmentation": ["absent", "diffuse regular", "localized regular", "diffuse irregular", "localized irregular"],
    "regression_structures": ["absent", "blue areas", "white areas", "combinations"],
    "dots_and_globules": ["absent", "regular", "irregular"],
    "blue_whitish_veil": ["absent", "present"],
    "vascular_structures": ["absent", "arborizing", "comma", "hairpin", "within regression", "wreath", "dotted",
                            "linear irregular"],
}  # fmt: skip
LOCATIONS = [
    "abdomen", "acral", "back", "buttocks", "chest", "genital areas", "head neck", "lower limbs", "upper limbs",
]  # fmt: skip
CATEGORICAL = {
    **CRITERIA,
    "level_of_diagnostic_difficulty": ["low", "medium", "high"],
    "elevation": ["flat", "palpable", "nodular"],
    "location": LOCATIONS,
    "sex": ["female", "male"],
}
NUMERIC = ["seven_point_score"]
#: The patient metadata the dataset paper's model takes beside the images.
DEFAULT_FEATURES = ["elevation", "location", "sex"]
SUBGROUP_FIELDS = ["sex", "location"]
REFUSED = {
    "diagnosis": "it is the label",
    "management": "the treatment chosen after diagnosis (excision for most malignant lesions): it gives the label away",
}
#: The official split's files (in ``meta/``) and the split each one is.
INDEX_FILES = {"train_indexes.csv": "train", "valid_indexes.csv": "val", "test_indexes.csv": "test"}


def read(data_dir: str | Path, image: str = "derm", task: str = "grouped") -> LesionTable:
    root = reading.require_dir(DATASET, data_dir)
    if image not in IMAGE_COLUMNS:
        raise DatasetError(f"{DATASET}: image must be one of {list(IMAGE_COLUMNS)}, got {image!r}")
    if task not in TASKS:
        raise DatasetError(f"{DATASET}: task must be one of {list(TASKS)}, got {task!r}")
    csv_path = reading.find_file(DATASET, root, [f"release_v0/meta/{META}", f"meta/{META}"])
    release = csv_path.parent.parent
    frame = reading.read_csv(DATASET, csv_path, ["case_num", "diagnosis", image, *DEFAULT_FEATURES])
    for column in ("case_num", image):
        reading.check_nonblank(DATASET, csv_path, frame, column)
    reading.check_unique(DATASET, csv_path, frame, "case_num")
    labels = reading.parse_labels(DATASET, csv_path, frame, "diagnosis", DIAGNOSES)
    class_names = DIAGNOSES if task == "diagnosis" else list(GROUPS)
    if task == "grouped":
        group_of = {d: list(GROUPS).index(g) for g, names in GROUPS.items() for d in names}
        labels = [group_of[DIAGNOSES[k]] for k in labels]
    meta = reading.parse_metadata(DATASET, csv_path, frame, NUMERIC, CATEGORICAL)
    lines = reading.lines_of(frame)
    paths = reading.relative_files(DATASET, release / "images", csv_path, frame[image].tolist(), image, lines)
    image_ids = [Path(name.strip()).stem for name in frame[image]]  # record ids: file names, as elsewhere
    first: dict[str, int] = {}
    for image_id, line in zip(image_ids, lines):
        if first.setdefault(image_id, line) != line:
            raise DatasetError(f"{DATASET}: {csv_path} column '{image}' names two files called {image_id!r} (lines "
                               f"{first[image_id]} and {line}); image ids must be unique")
    groups = [f"case:{c.strip()}" for c in frame["case_num"]]
    splits = official_splits(csv_path.parent, len(frame))
    records = reading.make_records(image_ids, paths, labels, groups, meta, lines=lines, official_splits=splits)
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
        root=release,
    )


def official_splits(folder: Path, n_rows: int) -> Optional[list[Optional[str]]]:
    """The split of every ``meta.csv`` row from the three index files (``None`` without them): each
    holds one column ``indexes`` of 0-based row numbers; together they must cover every row once."""
    present = [name for name in INDEX_FILES if (folder / name).is_file()]
    if not present:
        return None
    if len(present) < len(INDEX_FILES):
        missing = [name for name in INDEX_FILES if name not in present]
        raise DatasetError(f"{DATASET}: {folder} has {present} but not {missing}; the official split needs all three")
    splits: list[Optional[str]] = [None] * n_rows
    for name, split in INDEX_FILES.items():
        path = folder / name
        frame = reading.read_csv(DATASET, path, ["indexes"])
        for i, value in frame["indexes"].items():
            row = reading.parse_number(DATASET, path, "indexes", i, value)
            if row is None or not row.is_integer() or not 0 <= row < n_rows:
                raise DatasetError(f"{DATASET}: {path} line {reading.line_of(i)}, column 'indexes': expected a row "
                                   f"number of {META} (0 to {n_rows - 1}), got {value!r}")
            if splits[int(row)] is not None:
                raise DatasetError(f"{DATASET}: {path} line {reading.line_of(i)}: row {int(row)} of {META} is already "
                                   f"in the {splits[int(row)]} split")
            splits[int(row)] = split
    unassigned = [reading.line_of(i) for i, s in enumerate(splits) if s is None]
    if unassigned:
        raise DatasetError(f"{DATASET}: {len(unassigned)} row(s) of {META} (lines {unassigned[:10]}) are in none of "
                           f"{list(INDEX_FILES)}")
    return splits
