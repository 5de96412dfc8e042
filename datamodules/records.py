"""The canonical record: one image, whatever dataset it came from.

Every reader in :mod:`datamodules.sources` turns its CSV rows into :class:`LesionRecord` s and
returns them in a :class:`LesionTable`, so splits, metadata encoding and the ``Dataset`` never
look at a dataset-specific column name again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

#: A raw metadata value as read from the CSV: a category string, a number, or ``None`` (missing).
MetaValue = Union[str, float, None]


#: Files whose images are datasets inside them (``LesionRecord.image_key`` names one).
HDF5_SUFFIXES = (".h5", ".hdf5")
#: ``<file.hdf5>::<key>``: how an image inside an HDF5 file is named where one path is expected.
KEY_SEPARATOR = "::"


def image_location(path: str | Path, key: Optional[str] = None) -> Path:
    """``path``, or ``path::key`` for the image stored under ``key`` in the HDF5 file ``path``."""
    return Path(f"{path}{KEY_SEPARATOR}{key}") if key is not None else Path(path)


def split_location(location: str | Path) -> tuple[Path, Optional[str]]:
    """``(file, key)`` of an :func:`image_location`; ``key`` is ``None`` for a plain image file."""
    head, separator, key = str(location).rpartition(KEY_SEPARATOR)
    if separator and key and Path(head).suffix.lower() in HDF5_SUFFIXES:
        return Path(head), key
    return Path(location), None


#: ``LesionRecord.label`` of an image whose diagnosis is not given (challenge test sets, a folder of
#: new images): such records are only ever predicted, never trained or scored on.
UNLABELED = -1


class DatasetError(ValueError):
    """Bad input: the message names the dataset, the file and, where there is one, the row/column."""


# slots: 400,000 records (ISIC 2024) without a __dict__ each: less memory, fewer objects for the
# garbage collector to walk.
@dataclass(frozen=True, slots=True)
class LesionRecord:
    image_id: str
    image_path: Path
    #: Class index into ``LesionTable.class_names``, or :data:`UNLABELED`.
    label: int
    #: Patient id, or lesion id where the dataset has no patient id; splits never cut a group.
    group: str
    #: Raw metadata, keyed by the dataset's own column names (missing values are ``None``).
    meta: Mapping[str, MetaValue]
    #: Line number in the source CSV (header = line 1), for error messages; ``None`` for images
    #: found in a folder rather than listed in a CSV.
    line: Optional[int]
    #: Binary lesion mask (synthetic data has one per image), used to score attention maps.
    mask_path: Optional[Path] = None
    #: The image as the dataset ships it (an :func:`image_location`) when ``image_path`` points into
    #: a resized cache (``datamodules/image_cache.py``); ``None`` when ``image_path`` is that image already.
    source_path: Optional[Path] = None
    #: The split the distributor assigned (``train``, ``val`` or ``test``) for datasets that ship
    #: one (``--data.split=official``); ``None`` elsewhere.
    official_split: Optional[str] = None
    #: The dataset holding the image's encoded bytes when ``image_path`` is an HDF5 file (ISIC 2024's
    #: ``train-image.hdf5``); ``None`` for an image file.
    image_key: Optional[str] = None

    @property
    def location(self) -> Path:
        """Where the image is read from: ``image_path``, or ``image_path::image_key`` in an HDF5 file."""
        return image_location(self.image_path, self.image_key)

    @property
    def original_path(self) -> Path:
        """The image as downloaded: what records shown to a user (retrieval neighbours, prototype
        sources) name, so they stay valid when the cache is rebuilt or deleted; ``file.hdf5::<id>``
        for an image inside an HDF5 file (``load_rgb`` reads either)."""
        return self.source_path if self.source_path is not None else self.location


@dataclass
class LesionTable:
    """All records of one dataset plus what is needed to interpret their metadata."""

    dataset: str
    csv_path: Path
    class_names: list[str]
    records: list[LesionRecord]
    #: Every metadata column the reader parsed, by kind: numbers are standardised by the encoder,
    #: categories one-hot encoded with a missing/unknown state.
    numeric_columns: list[str]
    categorical_columns: list[str]
    #: The feature set used when the config does not name one (the published setting).
    default_features: list[str] = field(default_factory=list)
    #: Columns that may never be metadata features, with the reason (they give the label away).
    refused_features: dict[str, str] = field(default_factory=dict)
    #: Metadata columns the evaluation report breaks results down by by default (skin tone, sex,
    #: age, site, ...), where the dataset has them.
    subgroup_fields: list[str] = field(default_factory=list)
    #: The dataset's own folder, holding its CSV and images, where that is not the CSV's folder
    #: (Derm7pt: ``release_v0/``, its CSV in ``meta/``); see ``folder``.
    root: Optional[Path] = None

    @property
    def folder(self) -> Path:
        """The folder the dataset's files lie under (what the resized-image cache mirrors)."""
        return Path(self.root if self.root is not None else Path(self.csv_path).parent)

    def split_features(self, names: Optional[list[str]] = None) -> tuple[list[str], list[str]]:
        """``(numeric, categorical)`` feature names for ``names`` (``None``: the default set)."""
        names = self.default_features if names is None else list(names)
        refused = [n for n in names if n in self.refused_features]
        if refused:
            raise DatasetError(f"{self.dataset}: " + "; ".join(f"{n!r} cannot be a metadata feature: "
                                                              f"{self.refused_features[n]}" for n in refused))
        known = self.numeric_columns + self.categorical_columns
        unknown = [n for n in names if n not in known]
        if unknown:
            raise DatasetError(
                f"{self.dataset}: metadata feature(s) {unknown} are not columns of {self.csv_path}; "
                f"available: {known}"
            )
        return [n for n in names if n in self.numeric_columns], [
            n for n in names if n in self.categorical_columns
        ]
