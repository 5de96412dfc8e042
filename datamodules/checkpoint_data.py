"""The data a checkpoint was trained on, rebuilt from the checkpoint's plain values.

A training run's checkpoint holds the datamodule's settings (``datamodule_hyper_parameters``) and
its state (the metadata encoder fitted on the training split, the class and feature names): enough
to read the same images the same way, or other images (another dataset, an unlabeled test set, a
folder of pictures) the way the model was trained to see them. The encoder is reused as is, never
refitted on the new data.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

from datamodules.lesion_datamodule import LesionDataModule
from datamodules.metadata import MetadataEncoder
from datamodules.records import DatasetError, LesionTable
from datamodules.sources import OFFICIAL_SPLITS, read_unlabeled
from datamodules.sources.reading import image_folder_table


def datamodule_state(checkpoint: dict) -> dict[str, Any]:
    """The datamodule's saved state: ``encoder``, ``class_names``, ``feature_names``."""
    return checkpoint[LesionDataModule.__qualname__]


def trained_encoder(checkpoint: dict) -> MetadataEncoder:
    """The metadata encoder fitted on the checkpoint's training split."""
    return MetadataEncoder.from_state_dict(datamodule_state(checkpoint)["encoder"])


def build_datamodule(checkpoint: dict, dataset: Optional[str], data_dir: Optional[str], split: str,
                     batch_size: Optional[int] = None, num_workers: Optional[int] = None,
                     load_state: bool = True) -> LesionDataModule:
    """The training datamodule's settings on (optionally) other data; ``load_state`` installs the
    training encoder (which reads the dataset's table to check its classes and columns)."""
    hparams = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    if dataset is not None and dataset != hparams["dataset"]:
        hparams["dataset"], hparams["source_options"] = dataset, None
        if dataset not in OFFICIAL_SPLITS:  # trained on a shipped split; the other data are split into folds
            hparams["split"] = "folds"
    if data_dir is not None:
        hparams["data_dir"] = data_dir
    hparams["predict_split"] = split
    hparams["small_images"] = "warn"  # predicted with a warning, not refused
    if batch_size:
        hparams["eval_batch_size"] = batch_size
    if num_workers is not None:
        hparams["num_workers"] = num_workers
    datamodule = LesionDataModule(**hparams)
    if load_state:
        datamodule.load_state_dict(datamodule_state(checkpoint))  # the training encoder
    return datamodule


def unlabeled_table(checkpoint: dict, dataset: Optional[str], data_dir: Optional[str],
                    images: Optional[str]) -> tuple[LesionTable, MetadataEncoder]:
    """The records to predict without labels (every picture under ``images``, else the unlabeled
    test set of ``dataset``), and the training encoder that reads their metadata."""
    encoder = trained_encoder(checkpoint)
    if images is not None:
        table = image_folder_table(images)
        if encoder.dim:
            warnings.warn(f"{images} gives no metadata; the model's {encoder.dim} metadata features are "
                          "all encoded as missing", stacklevel=2)
        return table, encoder
    trained = checkpoint["datamodule_hyper_parameters"]
    table = read_unlabeled(dataset or trained["dataset"], data_dir or trained.get("data_dir"))
    absent = [c for c in [*encoder.numeric, *encoder.categorical] if c not in table.numeric_columns + table.categorical_columns]
    if absent:
        raise DatasetError(f"{table.dataset}: the model uses metadata column(s) {absent}, which {table.csv_path} lacks")
    return table, encoder
