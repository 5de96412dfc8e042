"""What every dataset reader needs: strict CSV reading, value parsing and finding image files.

These are the reading rules of ``docs/datasets.md``: blank / ``UNK`` / ``unknown`` mean missing,
explicitly; values outside a column's documented vocabulary stop with an error naming the file,
line and column; nothing is silently dropped.
"""

from __future__ import annotations

import csv
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from datamodules import hdf5_images
from datamodules.records import UNLABELED, DatasetError, LesionRecord, LesionTable, MetaValue

MISSING_TOKENS = {"", "unk", "unknown", "nan", "none", "na", "n/a"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def require_dir(dataset: str, data_dir: Optional[str | Path]) -> Path:
    if data_dir is None or str(data_dir) == "":
        raise DatasetError(f"{dataset}: no data_dir given; set --data.data_dir (make ... DATA_DIR=...)")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{dataset}: data_dir {path} does not exist or is not a folder")
    return path


def find_file(dataset: str, data_dir: Path, candidates: Sequence[str]) -> Path:
    """The first of ``candidates`` (relative names) present in ``data_dir``."""
    for name in candidates:
        if (data_dir / name).is_file():
            return data_dir / name
    raise DatasetError(f"{dataset}: none of {list(candidates)} found in {data_dir}")


def read_csv(dataset: str, path: Path, required: Iterable[str], columns: Optional[Iterable[str]] = None,
             numeric: Iterable[str] = ()) -> pd.DataFrame:
    """Read every cell as a string (blank stays ``""``) and check the required columns.

    ``columns``: read only these (where present; every row is still checked for the header's
    number of fields): a large file's unused columns then cost no memory. ``numeric``: columns
    read as ``float64`` (blank = NaN) by pandas' own parser, whose values are ``float(cell)``'s
    (pandas >= 3 parses correctly rounded; a test checks); if any cell of them is not a number
    that way (``UNK``, a typo), the whole file is read as strings instead, for
    :func:`parse_number_column` to apply the rules and name the cell."""
    try:
        header = _header(path)
    except OSError as err:
        raise DatasetError(f"{dataset}: cannot read {path}: {err}") from err
    last = header[-1] if header else None
    wanted = None if columns is None else {*columns, *required}
    # The last column is read too: only a row whose last field is blank can be a truncated row.
    usecols = None if wanted is None else (lambda c: c.strip() in wanted or c.strip() == last)
    raw = {c.strip(): c for c in header}
    as_float = {raw[c]: np.float64 for c in numeric if c in raw and (wanted is None or c in wanted)}
    frame = None
    try:
        if as_float:
            try:
                frame = pd.read_csv(path, dtype=defaultdict(lambda: str, as_float), keep_default_na=False,
                                    na_values={c: [""] for c in as_float}, usecols=usecols)
            except (ValueError, OverflowError):  # a cell that is not a number: read as strings below
                frame = None
        if frame is None:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, usecols=usecols)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DatasetError(f"{dataset}: cannot read {path}: {err}") from err
    frame.columns = [c.strip() for c in frame.columns]
    if last not in frame.columns or _blank(frame[last]).any():
        check_row_lengths(dataset, path, len(header))
    if wanted is not None and last not in wanted and last in frame.columns:
        frame = frame.drop(columns=[last])
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{dataset}: {path} lacks required column(s) {missing}; it has {header}"
        )
    if frame.empty:
        raise DatasetError(f"{dataset}: {path} has no data rows")
    return frame


def _blank(column: pd.Series) -> pd.Series:
    """Cells as pandas fills the missing fields of a short row: ``""``, or NaN in a number column."""
    return column.isna() if pd.api.types.is_numeric_dtype(column.dtype) else column == ""


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        return [c.strip() for c in next(csv.reader(handle), [])]


def check_row_lengths(dataset: str, path: Path, n_columns: int) -> None:
    """pandas rejects rows with too many fields but pads short ones with blanks, which would then
    read as missing metadata: a truncated row is an error naming its line."""
    short = []
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for row in reader:
            if row and len(row) < n_columns:
                short.append((reader.line_num, len(row)))
    if short:
        shown = ", ".join(f"line {line} has {n}" for line, n in short[:10])
        raise DatasetError(f"{dataset}: {path}: row(s) with fewer than the header's {n_columns} fields ({shown}"
                           f"{', ...' if len(short) > 10 else ''})")


def line_of(row_index: int) -> int:
    """CSV line number of a data row (the header is line 1). Parsers pass a frame's index label, so
    a frame that lost rows (or one built from another format, indexed by line - 2) still names
    the right lines."""
    return int(row_index) + 2


def lines_of(frame: pd.DataFrame) -> list[int]:
    """The file line of every row of ``frame``."""
    return [line_of(i) for i in frame.index]


def is_missing(value: str) -> bool:
    return value.strip().lower() in MISSING_TOKENS


def parse_number(dataset: str, path: Path, column: str, row_index: int, value: str) -> Optional[float]:
    if is_missing(value):
        return None
    try:
        return float(value)
    except ValueError:
        raise DatasetError(
            f"{dataset}: {path} line {line_of(row_index)}, column '{column}': "
            f"expected a number, got {value!r}"
        ) from None


def parse_category(
    dataset: str,
    path: Path,
    column: str,
    row_index: int,
    value: str,
    vocabulary: Optional[Iterable[str]] = None,
) -> Optional[str]:
    """A category string normalised for comparison, or ``None`` when missing.

    With a ``vocabulary`` (the values the dataset documents), anything else is an error rather
    than a new category: a typo in a CSV must not become a feature silently.
    """
    if is_missing(value):
        return None
    value = value.strip()
    if value.replace(".", "", 1).isdigit() and float(value).is_integer():
        value = str(int(float(value)))  # "2.0" -> "2" (Fitzpatrick type is stored as a float)
    if vocabulary is not None:
        allowed = {v.lower(): v for v in vocabulary}
        if value.lower() not in allowed:
            raise DatasetError(
                f"{dataset}: {path} line {line_of(row_index)}, column '{column}': unknown category "
                f"{value!r}; expected one of {sorted(allowed.values())} or blank/UNK for missing"
            )
        value = allowed[value.lower()]
    return value


def parse_metadata(
    dataset: str,
    path: Path,
    frame: pd.DataFrame,
    numeric: Sequence[str],
    categorical: dict[str, Optional[Sequence[str]]],
) -> list[dict[str, MetaValue]]:
    """Parse the metadata columns of every row (columns absent from the file are all missing)."""
    return rows_of(parse_metadata_columns(dataset, path, frame, numeric, categorical), len(frame))


def parse_metadata_columns(
    dataset: str,
    path: Path,
    frame: pd.DataFrame,
    numeric: Sequence[str],
    categorical: dict[str, Optional[Sequence[str]]],
) -> dict[str, list[MetaValue]]:
    """``{column: one value per row}`` by the rules of :func:`parse_number` and
    :func:`parse_category` (columns absent from the file are left out). Done per column, not per
    cell: numbers are converted in one pass and each distinct category is parsed once, so a file
    of 400,000 rows reads in seconds; the first bad cell of a column is reported as before."""
    out: dict[str, list[MetaValue]] = {}
    for column in numeric:
        if column in frame.columns:
            out[column] = parse_number_column(dataset, path, column, frame[column])
    for column, vocabulary in categorical.items():
        if column in frame.columns:
            out[column] = parse_category_column(dataset, path, column, frame[column], vocabulary)
    return out


def parse_number_column(dataset: str, path: Path, column: str, values: pd.Series) -> list[Optional[float]]:
    """:func:`parse_number` of every cell of a column."""
    numbers = parse_number_array(dataset, path, column, values).tolist()
    return [None if x != x else x for x in numbers]  # NaN -> None


def parse_number_array(dataset: str, path: Path, column: str, values: pd.Series) -> np.ndarray:
    """:func:`parse_number` of every cell of a column as ``float64``, NaN where missing. Cells are
    converted by Python's own ``float`` (numpy's cast of strings calls it; a column ``read_csv``
    parsed as numbers was converted the same way), blanks missing; any other token takes the
    cell-by-cell path, which names the first bad cell."""
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64)
    cells = values.to_numpy(dtype=object)
    try:
        return np.where(cells == "", "nan", cells).astype(np.float64)
    except ValueError:  # missing-value tokens, or a bad cell: the exact rules, cell by cell
        parsed = [parse_number(dataset, path, column, i, value) for i, value in zip(values.index, cells.tolist())]
        return np.array([np.nan if x is None else x for x in parsed], dtype=np.float64)


def parse_category_column(
    dataset: str, path: Path, column: str, values: pd.Series, vocabulary: Optional[Iterable[str]] = None
) -> list[Optional[str]]:
    """:func:`parse_category` of every cell of a column, parsing each distinct value once (in the
    order they first appear, so the first bad cell is the one reported)."""
    codes, uniques = pd.factorize(values.to_numpy(dtype=object))
    first = np.unique(codes, return_index=True)[1]  # codes number the values by first appearance
    vocabulary = list(vocabulary) if vocabulary is not None else None
    parsed = np.empty(len(uniques), dtype=object)
    for k, value in enumerate(uniques):
        parsed[k] = parse_category(dataset, path, column, values.index[int(first[k])], value, vocabulary)
    return parsed[codes].tolist()


def rows_of(columns: dict[str, list[MetaValue]], n: Optional[int] = None) -> list[dict[str, MetaValue]]:
    """Per-row metadata dicts from per-column lists (``n`` rows when there are no columns)."""
    if not columns:
        return [{} for _ in range(n or 0)]
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*columns.values())]


def parse_labels(
    dataset: str, path: Path, frame: pd.DataFrame, column: str, class_names: Sequence[str]
) -> list[int]:
    """Class indices of ``column``; an unknown or blank label stops with every offending line."""
    lookup = {name.lower(): k for k, name in enumerate(class_names)}
    codes, uniques = pd.factorize(frame[column].to_numpy(dtype=object))
    index = np.array([lookup.get(value.strip().lower(), -1) for value in uniques], dtype=np.int64)
    labels = index[codes] if len(codes) else np.zeros(0, np.int64)
    bad_rows = np.flatnonzero(labels < 0)
    if len(bad_rows):
        values = frame[column].tolist()
        shown = ", ".join(f"line {line_of(frame.index[i])}: {values[i]!r}" for i in bad_rows[:10])
        raise DatasetError(
            f"{dataset}: {path} column '{column}' has {len(bad_rows)} unknown label(s) ({shown}"
            f"{', ...' if len(bad_rows) > 10 else ''}); expected one of {list(class_names)}"
        )
    return labels.tolist()


#: Spellings of a yes/no cell: the challenges write 0.0/1.0, pandas-written CSVs True/False.
FLAGS = {"0": False, "1": True, "0.0": False, "1.0": True, "false": False, "true": True}


def parse_flags(dataset: str, path: Path, frame: pd.DataFrame, column: str) -> list[bool]:
    """A 0/1 (or True/False) column; anything else, blank included, stops with every bad line."""
    flags, bad = [], []
    for i, value in frame[column].items():
        flag = FLAGS.get(value.strip().lower())
        if flag is None:
            bad.append((line_of(i), value))
        flags.append(bool(flag))
    if bad:
        shown = ", ".join(f"line {n}: {v!r}" for n, v in bad[:10])
        raise DatasetError(f"{dataset}: {path} column '{column}' must be 0/1 (or True/False); {len(bad)} cell(s) are "
                           f"not ({shown}{', ...' if len(bad) > 10 else ''})")
    return flags


def metadata_by_id(
    dataset: str,
    path: Path,
    image_ids: Sequence[str],
    meta_path: Path,
    meta_frame: pd.DataFrame,
    id_column: str,
    numeric: Sequence[str],
    categorical: dict[str, Optional[Sequence[str]]],
) -> list[dict[str, MetaValue]]:
    """The metadata of each of ``image_ids`` (listed in ``path``) from a separate file, matched by id
    whatever the row order of the two files. Every id needs a row; errors in the metadata name the
    metadata file's own lines."""
    check_unique(dataset, meta_path, meta_frame, id_column)
    by_id = {name.strip(): k for k, name in enumerate(meta_frame[id_column].tolist())}
    unmatched = [(line_of(i), name) for i, name in enumerate(image_ids) if name not in by_id]
    if unmatched:
        shown = ", ".join(f"{name} (line {line})" for line, name in unmatched[:10])
        raise DatasetError(f"{dataset}: {len(unmatched)} image(s) of {path} have no row in {meta_path}: {shown}")
    parsed = parse_metadata(dataset, meta_path, meta_frame, numeric, categorical)
    return [parsed[by_id[name]] for name in image_ids]


class ImageIndex:
    """Maps image ids (file stems) to files found under a dataset's image folders.

    Datasets ship their images split over several folders (``imgs_part_1..3``,
    ``HAM10000_images_part1/2``); users often flatten them. The index looks in every candidate
    folder that exists, recursively, so both layouts load unchanged.
    """

    def __init__(self, dataset: str, data_dir: Path, folders: Sequence[str]):
        self.dataset = dataset
        self.searched = [data_dir / f for f in folders if (data_dir / f).is_dir()]
        if not self.searched:
            raise DatasetError(
                f"{dataset}: no image folder found in {data_dir}; looked for {list(folders)}"
            )
        self.by_stem: dict[str, Path] = {}
        #: Other files found for an id already indexed (e.g. ``jpeg/train/x.jpg`` and a resized
        #: ``train/x.jpg``): the first folder in ``folders`` wins, and the choice is reported.
        self.also: dict[str, list[Path]] = {}
        for folder in self.searched:
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                    for key in (path.stem, path.name):
                        if key not in self.by_stem:
                            self.by_stem[key] = path
                        elif key == path.stem and self.by_stem[key] != path:
                            self.also.setdefault(key, []).append(path)

    def find(self, image_id: str) -> Optional[Path]:
        """The file of ``image_id`` (a file name, or a name without extension), or ``None``."""
        return self.by_stem.get(image_id) or self.by_stem.get(Path(image_id).stem)

    def resolve_all(
        self, csv_path: Path, image_ids: Sequence[str], lines: Optional[Sequence[int]] = None, what: str = "image"
    ) -> list[Path]:
        """The file of every id; every missing one is reported (with its line: ``lines``, else
        the CSV line of the id's position) at once. ``what`` names the files in that message."""
        lines = lines if lines is not None else [line_of(i) for i in range(len(image_ids))]
        paths = [self.find(image_id) for image_id in image_ids]
        missing = [(n, image_id) for n, image_id, path in zip(lines, image_ids, paths) if path is None]
        if missing:
            shown = ", ".join(f"{name} (line {n})" for n, name in missing[:10])
            raise DatasetError(
                f"{self.dataset}: {len(missing)} {what}(s) listed in {csv_path} are missing from "
                f"{[str(p) for p in self.searched]}: {shown}{', ...' if len(missing) > 10 else ''}"
            )
        doubled = [(image_id, path) for image_id, path in zip(image_ids, paths) if path.stem in self.also]
        if doubled:
            image_id, path = doubled[0]
            warnings.warn(
                f"{self.dataset}: {len(doubled)} image(s) of {csv_path} exist in more than one file; using the "
                f"first folder of {[str(p) for p in self.searched]}, e.g. {image_id}: {path} (also "
                f"{', '.join(str(p) for p in self.also[path.stem])})",
                stacklevel=2,
            )
        return paths


def mask_paths(
    dataset: str,
    root: Path,
    folders: Sequence[str],
    csv_path: Path,
    mask_ids: Sequence[str],
    lines: Optional[Sequence[int]] = None,
    required: bool = False,
) -> list[Optional[Path]]:
    """The lesion mask file of every id, found like images in ``folders`` under ``root``.

    Masks are often a separate download: with none of ``folders`` present every record gets
    ``None`` (an error with ``required``); once a mask folder is there, a missing mask is an error
    listing every one, never a record silently without its mask."""
    if not required and not any((root / folder).is_dir() for folder in folders):
        return [None] * len(mask_ids)
    return list(ImageIndex(dataset, root, folders).resolve_all(csv_path, mask_ids, lines, what="lesion mask"))


def relative_files(
    dataset: str, folder: Path, path: Path, names: Sequence[str], column: str, lines: Sequence[int]
) -> list[Path]:
    """Files named by paths relative to ``folder`` (``names``, from ``column`` of ``path``); every
    missing one is reported with its line at once."""
    files = [folder / name.strip() for name in names]
    missing = [(n, name) for n, name, file in zip(lines, names, files) if not file.is_file()]
    if missing:
        shown = ", ".join(f"{name} (line {n})" for n, name in missing[:10])
        raise DatasetError(f"{dataset}: {len(missing)} file(s) named in column '{column}' of {path} are missing "
                           f"from {folder}: {shown}{', ...' if len(missing) > 10 else ''}")
    return files


def check_unique(dataset: str, path: Path, frame: pd.DataFrame, column: str) -> None:
    duplicated = frame[column][frame[column].duplicated(keep=False)]
    if len(duplicated):
        first = duplicated.index[:5]
        shown = ", ".join(f"line {line_of(i)}: {frame[column][i]!r}" for i in first)
        raise DatasetError(f"{dataset}: {path} column '{column}' has duplicate ids ({shown})")


def check_nonblank(dataset: str, path: Path, frame: pd.DataFrame, column: str) -> None:
    blank = [line_of(frame.index[i]) for i in np.flatnonzero((frame[column].str.strip() == "").to_numpy())]
    if blank:
        raise DatasetError(
            f"{dataset}: {path} column '{column}' is blank on line(s) {blank[:10]}"
            f"{' ...' if len(blank) > 10 else ''}"
        )


def check_hdf5_keys(dataset: str, csv_path: Path, hdf5_path: Path, image_ids: Sequence[str]) -> None:
    """Every id of ``csv_path`` must be an image of ``hdf5_path``; all missing ones are reported
    at once, with their CSV lines."""
    present = hdf5_images.keys(hdf5_path)
    missing = [(line_of(i), image_id) for i, image_id in enumerate(image_ids) if image_id not in present]
    if missing:
        shown = ", ".join(f"{name} (line {n})" for n, name in missing[:10])
        raise DatasetError(f"{dataset}: {len(missing)} image(s) listed in {csv_path} are missing from {hdf5_path}: "
                           f"{shown}{', ...' if len(missing) > 10 else ''}")


def make_records(
    image_ids: Sequence[str],
    paths: Sequence[Path],
    labels: Sequence[int],
    groups: Sequence[str],
    meta: Sequence[dict[str, MetaValue]],
    masks: Optional[Sequence[Optional[Path]]] = None,
    lines: Optional[Sequence[int]] = None,
    official_splits: Optional[Sequence[Optional[str]]] = None,
    keys: Optional[Sequence[Optional[str]]] = None,
) -> list[LesionRecord]:
    """One record per CSV row, in file order (``line`` points back at the row: ``lines``, else
    the CSV line of the row's position). ``keys``: each image's dataset in the HDF5 file ``paths``
    names."""
    n = len(image_ids)
    masks = masks if masks is not None else [None] * n
    lines = lines if lines is not None else range(line_of(0), line_of(n))
    official_splits = official_splits if official_splits is not None else [None] * n
    keys = keys if keys is not None else [None] * n
    return [
        LesionRecord(
            image_id=Path(image_id).stem if key is None else image_id,
            image_path=path,
            label=label,
            group=group,
            meta=row_meta,
            line=line,
            mask_path=mask,
            official_split=split,
            image_key=key,
        )
        for image_id, path, label, group, row_meta, mask, line, split, key in zip(
            image_ids, paths, labels, groups, meta, masks, lines, official_splits, keys
        )
    ]


def unlabeled_table(
    dataset: str,
    root: Path,
    csv_path: Path,
    frame: pd.DataFrame,
    id_column: str,
    image_folders: Sequence[str],
    numeric: Sequence[str],
    categorical: dict[str, Optional[Sequence[str]]],
) -> LesionTable:
    """A challenge test set: one unlabeled record per CSV row, metadata parsed by the training
    rules (so the checkpoint's encoder reads it the same way), each image its own group."""
    check_nonblank(dataset, csv_path, frame, id_column)
    check_unique(dataset, csv_path, frame, id_column)
    image_ids = [v.strip() for v in frame[id_column].tolist()]
    meta = parse_metadata(dataset, csv_path, frame, numeric, categorical)
    paths = ImageIndex(dataset, root, image_folders).resolve_all(csv_path, image_ids)
    groups = [f"image:{image_id}" for image_id in image_ids]
    records = make_records(image_ids, paths, [UNLABELED] * len(image_ids), groups, meta)
    return LesionTable(dataset, csv_path, [], records, list(numeric), list(categorical))


def image_folder_table(folder: str | Path) -> LesionTable:
    """Every image under ``folder`` (recursively), unlabeled and without metadata: predicting on
    new pictures. Image ids are file stems, so two files with the same stem are an error."""
    root = require_dir("images", folder)
    records, seen = [], {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if path.stem in seen:
            raise DatasetError(f"images: {seen[path.stem]} and {path} share the id {path.stem!r}; rename one")
        seen[path.stem] = path
        records.append(LesionRecord(path.stem, path, UNLABELED, f"image:{path.stem}", {}, line=None))
    if not records:
        raise DatasetError(f"images: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return LesionTable("images", root, [], records, [], [])
