"""One reader per public dataset, each taking the files exactly as distributed.

``read_table(name, data_dir, **options)`` is the single entry point; adding a dataset means a
module here with a ``read(data_dir, ...) -> LesionTable`` and one line in ``READERS``.
``read_unlabeled`` reads the challenge test sets (no labels) for prediction.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

from datamodules.records import DatasetError, LesionTable
from datamodules.sources import ham10000, isic2019, isic2020, isic2024, pad_ufes20
from datamodules.sources import ddi, derm7pt, fitzpatrick17k, isic2017, ph2

READERS: dict[str, Callable[..., LesionTable]] = {
    "pad_ufes20": pad_ufes20.read,
    "isic2019": isic2019.read,
    "isic2020": isic2020.read,
    "ham10000": ham10000.read,
    "isic2017": isic2017.read,
    "ph2": ph2.read,
    "derm7pt": derm7pt.read,
    "ddi": ddi.read,
    "fitzpatrick17k": fitzpatrick17k.read,
    "isic2024": isic2024.read,
}
DATASETS = ["synthetic", *READERS]
#: Per dataset, the metadata columns the evaluation reports per value by default (skin type, sex,
#: age, site, hospital where it records them); the synthetic data has PAD-UFES-20's columns.
SUBGROUP_FIELDS: dict[str, list[str]] = {
    "synthetic": list(pad_ufes20.SUBGROUP_FIELDS),
    **{name: list(getattr(sys.modules[read.__module__], "SUBGROUP_FIELDS", [])) for name, read in READERS.items()},
}
#: Datasets that ship their own train / validation / test split (``--data.split=official``); their
#: records carry it as ``official_split``.
OFFICIAL_SPLITS = ("isic2017", "derm7pt")
#: Datasets whose reader can leave out rows whose image was never downloaded
#: (``--data.allow_missing_images=true``).
MISSING_IMAGES_ALLOWED = ("fitzpatrick17k",)
#: Datasets that ship an unlabeled (challenge) test set, and its reader.
UNLABELED_READERS: dict[str, Callable[[Optional[str | Path]], LesionTable]] = {
    "isic2019": isic2019.read_unlabeled,
    "isic2020": isic2020.read_unlabeled,
    "isic2024": isic2024.read_unlabeled,
}


def read_table(name: str, data_dir: Optional[str | Path] = None, **options: Any) -> LesionTable:
    """Read dataset ``name`` from ``data_dir``; ``synthetic`` generates into its cache first."""
    if name == "synthetic":
        from datamodules import synthetic

        config = synthetic.SyntheticConfig(**options)
        folder = synthetic.ensure_generated(config, Path(data_dir) if data_dir else None)
        table = pad_ufes20.read(folder, mask_folder=synthetic.MASK_FOLDER)
        table.dataset = "synthetic"
        return table
    if name not in READERS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    return READERS[name](data_dir, **options)


def read_unlabeled(name: str, data_dir: Optional[str | Path]) -> LesionTable:
    """The unlabeled test set that dataset ``name`` ships (records carry ``UNLABELED``)."""
    if name not in UNLABELED_READERS:
        raise DatasetError(
            f"{name} ships no unlabeled test set; those that do: {list(UNLABELED_READERS)} "
            "(any folder of images: --images DIR)"
        )
    return UNLABELED_READERS[name](data_dir)
