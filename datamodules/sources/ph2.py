"""PH2 (dermoscopy, Hospital Pedro Hispano): ``PH2Dataset/PH2_dataset.txt`` + ``PH2 Dataset images/``.

Each case ``IMDxxx`` is a folder holding ``IMDxxx_Dermoscopic_Image/IMDxxx.bmp``, its lesion mask
``IMDxxx_lesion/IMDxxx_lesion.bmp`` and colour-region masks (``IMDxxx_roi/``, not read). The table
is text: cells between ``||`` padded with spaces, the six criteria cells separated by single ``|``,
then a legend after the last case. Classes come from the clinical diagnosis (0 / 1 / 2); the
dermoscopic criteria are the metadata, as the file codes them. One image per lesion, no patient
ids: each image is its own group.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from datamodules.records import DatasetError, LesionTable
from datamodules.sources import reading

DATASET = "ph2"
TABLE = "PH2_dataset.txt"
IMAGES = "PH2 Dataset images"
CLASS_NAMES = ["common nevus", "atypical nevus", "melanoma"]
#: The table's header cells, and the column name each gets here.
HEADER = {
    "Name": "name", "Histological Diagnosis": "histological_diagnosis",
    "Clinical Diagnosis": "clinical_diagnosis", "Asymmetry": "asymmetry", "Pigment Network": "pigment_network",
    "Dots/Globules": "dots_globules", "Streaks": "streaks", "Regression Areas": "regression_areas",
    "Blue-Whitish Veil": "blue_whitish_veil", "Colors": "colors",
}  # fmt: skip
#: The legend's colour codes; each colour becomes a True/False column ``color_<name>``.
COLOURS = {"1": "white", "2": "red", "3": "light_brown", "4": "dark_brown", "5": "blue_gray", "6": "black"}
ABSENT_PRESENT = ["A", "P"]  # absent / present
CATEGORICAL = {
    "asymmetry": ["0", "1", "2"],  # fully symmetric / symmetric in one axis / fully asymmetric
    "pigment_network": ["A", "AT", "T"],  # absent / atypical / typical
    "dots_globules": ["A", "AT", "T"],
    "streaks": ABSENT_PRESENT,
    "regression_areas": ABSENT_PRESENT,
    "blue_whitish_veil": ABSENT_PRESENT,
    **{f"color_{name}": ["True", "False"] for name in COLOURS.values()},
}
DEFAULT_FEATURES = list(CATEGORICAL)
REFUSED = {
    "histological_diagnosis": "it is the diagnosis in words (given for some lesions)",
    "clinical_diagnosis": "it is the label",
}


def read(data_dir: str | Path) -> LesionTable:
    root = reading.require_dir(DATASET, data_dir)
    table_path = reading.find_file(DATASET, root, [TABLE, f"PH2Dataset/{TABLE}"])
    base = table_path.parent
    frame = parse_table(table_path)
    reading.check_nonblank(DATASET, table_path, frame, "name")
    reading.check_unique(DATASET, table_path, frame, "name")
    codes = {str(k): name for k, name in enumerate(CLASS_NAMES)}
    frame["clinical_diagnosis"] = [codes.get(v.strip(), v) for v in frame["clinical_diagnosis"]]
    labels = reading.parse_labels(DATASET, table_path, frame, "clinical_diagnosis", CLASS_NAMES)
    frame = frame.join(_colour_columns(table_path, frame["colors"]))
    meta = reading.parse_metadata(DATASET, table_path, frame, [], CATEGORICAL)
    names = [v.strip() for v in frame["name"].tolist()]
    lines = reading.lines_of(frame)
    paths = reading.ImageIndex(DATASET, base, [IMAGES]).resolve_all(table_path, names, lines)
    masks = reading.mask_paths(DATASET, base, [IMAGES], table_path, [f"{n}_lesion" for n in names], lines,
                               required=True)
    records = reading.make_records(names, paths, labels, [f"image:{n}" for n in names], meta, masks, lines)
    return LesionTable(
        dataset=DATASET,
        csv_path=table_path,
        class_names=list(CLASS_NAMES),
        records=records,
        numeric_columns=[],
        categorical_columns=list(CATEGORICAL),
        default_features=list(DEFAULT_FEATURES),
        refused_features=dict(REFUSED),
    )


def parse_table(path: Path) -> pd.DataFrame:
    """The table's rows as strings, columns named as in ``HEADER``, indexed by file line - 2 (the
    convention of ``reading.line_of``). Rows are the lines that start with ``||``; the first is the
    header, which must be PH2's; the legend after the table is not read."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DatasetError(f"{DATASET}: cannot read {path}: {err}") from err
    rows, index, header = [], [], None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip().startswith("||"):
            continue
        cells = [c.strip() for c in line.strip().replace("||", "|").strip("|").split("|")]
        if header is None:
            header = cells
            expected = list(HEADER)
            if [" ".join(c.split()).lower() for c in cells] != [c.lower() for c in expected]:
                raise DatasetError(f"{DATASET}: {path} line {number}: expected the header {expected}, found {cells}")
            continue
        if len(cells) != len(header):
            raise DatasetError(f"{DATASET}: {path} line {number} has {len(cells)} cells, the header {len(header)}")
        rows.append(cells)
        index.append(number - 2)
    if header is None:
        raise DatasetError(f"{DATASET}: {path} holds no '||' table")
    if not rows:
        raise DatasetError(f"{DATASET}: {path} has no data rows")
    return pd.DataFrame(rows, columns=list(HEADER.values()), index=index)


def _colour_columns(path: Path, cells: pd.Series) -> pd.DataFrame:
    """``color_<name>`` = ``True``/``False`` from the space-separated colour codes (blank: missing)."""
    out = {f"color_{name}": [] for name in COLOURS.values()}
    for i, cell in cells.items():
        codes = re.split(r"[\s,]+", cell.strip()) if cell.strip() else []
        unknown = [c for c in codes if c not in COLOURS]
        if unknown:
            raise DatasetError(f"{DATASET}: {path} line {reading.line_of(i)}, column 'Colors': unknown colour code(s) "
                               f"{unknown}; expected some of {list(COLOURS)}")
        for code, name in COLOURS.items():
            out[f"color_{name}"].append(str(code in codes) if codes else "")
    return pd.DataFrame(out, index=cells.index)
