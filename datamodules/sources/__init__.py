"""One reader per public dataset, each taking the files exactly as distributed.

``read_table(name, data_dir, **options)`` is the single entry point; adding a dataset means a
module here with a ``read(data_dir, ...) -> LesionTable`` and one line in ``READERS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from datamodules.records import DatasetError, LesionTable
from datamodules.sources import ham10000, isic2019, isic2020, pad_ufes20

READERS: dict[str, Callable[..., LesionTable]] = {
    "pad_ufes20": pad_ufes20.read,
    "isic2019": isic2019.read,
    "isic2020": isic2020.read,
    "ham10000": ham10000.read,
}
DATASETS = ["synthetic", *READERS]


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
