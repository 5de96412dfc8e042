"""Per-image class probabilities from a checkpoint, as a CSV.

    python -m experiments.predict --ckpt runs/metablock/<run>/checkpoints/best-epoch011.ckpt \
        [--dataset pad_ufes20 --data-dir /data/pad] [--split all|train|val|test|unlabeled] [--out file.csv]
    python -m experiments.predict --ckpt ... --images /folder/of/new/pictures
    python -m experiments.predict --ckpt a.ckpt b.ckpt [--tta 8]   (or a folder of runs: their best-*.ckpt)

``--tta 8`` averages the class probabilities over the 8 dihedral views of each image; several
checkpoints are averaged as an ensemble, each member reading the images with its own transform
and metadata encoder (they must share classes and metadata features, or they are refused naming
both files).

A checkpoint calibrated after training (``--calibrate=temperature``) holds a temperature fitted on
its validation split; its logits are divided by it before the softmax (each ensemble member by
its own). ``--no-calibration`` gives the uncalibrated probabilities.

The file has each image's ``group`` (patient or lesion) and the dataset's subgroup metadata fields
(``datamodules.sources.SUBGROUP_FIELDS``), so that ``make evaluate`` can score it.

``--split unlabeled`` reads the challenge test set the dataset ships without labels (ISIC 2019:
``ISIC_2019_Test_Metadata.csv`` + ``ISIC_2019_Test_Input/``; ISIC 2020: ``test.csv`` +
``jpeg/test/``). ``--images`` takes every picture under a folder; such images have no metadata,
so a fusion model sees them with every field missing (a warning says so).

The checkpoint is loaded with ``torch.load(weights_only=True)``: it holds tensors and plain
values only (no pickled classes). It carries everything needed to predict: the module class
and its configuration (the network's among it; ``lightning_modules.modules.loading``), the
datamodule's settings, and the metadata encoder fitted on the training split, which is reused as
is, never refitted on the new data (``datamodules.checkpoint_data``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402

from datamodules.checkpoint_data import build_datamodule, unlabeled_table  # noqa: E402
from datamodules.records import UNLABELED  # noqa: E402
from lightning_modules.contracts import PredictsClasses  # noqa: E402
from lightning_modules.evaluation.options import default_subgroup_fields  # noqa: E402
from lightning_modules.modules.ensemble import (  # noqa: E402
    TTA_VIEWS,
    average_probabilities,
    check_ensemble,
    member_probabilities,
)
from lightning_modules.errors import NonFiniteError  # noqa: E402
from lightning_modules.modules.loading import checkpoint_paths, load_module, read_checkpoint  # noqa: E402
from lightning_modules.utils.predictions_csv import write_predictions  # noqa: E402


def predict(ckpt: str | Sequence[str], dataset: Optional[str] = None, data_dir: Optional[str] = None,
            split: str = "all", out: Optional[str] = None, batch_size: Optional[int] = None,
            num_workers: Optional[int] = None, accelerator: str = "auto", images: Optional[str] = None,
            tta: int = 1, calibrated: bool = True) -> Path:
    """Class probabilities for every image of ``split`` (or under ``images``) as a CSV. Several
    checkpoints (or a folder of runs) are averaged; ``tta`` views of each image are averaged. The
    images are those of the first checkpoint's data (or ``dataset``/``data_dir``/``images``).
    ``calibrated``: apply the temperature a checkpoint holds (``False``: temperature 1)."""
    paths = checkpoint_paths(ckpt)
    checkpoints = [read_checkpoint(p) for p in paths]
    check_ensemble(paths, checkpoints)
    modules = [load_module(p) for p in paths]
    for path, module in zip(paths, modules):
        if not isinstance(module, PredictsClasses):
            raise ValueError(f"{path}: {type(module).__name__} embeds images rather than classifying them: "
                             "use `python -m experiments.retrieve` for nearest training lesions")
        if module.temperature != 1.0:
            if calibrated:
                print(f"{path}: calibrated, logits divided by its temperature {module.temperature:.4g}")
            else:
                module.temperature = 1.0
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False)
    if images is not None or split == "unlabeled":
        table, _ = unlabeled_table(checkpoints[0], dataset, data_dir, images)
        records, source = table.records, table.dataset
    else:
        first = build_datamodule(checkpoints[0], dataset, data_dir, split, batch_size, num_workers)
        records, source = first.records(split), first.hparams.dataset
    members = []
    for path, checkpoint, module in zip(paths, checkpoints, modules):
        member = member_probabilities(trainer, checkpoint, module, records, source, tta, batch_size, num_workers)
        check_finite_probabilities(path, member, records)
        members.append(member)
    index, probs = members[0] if len(members) == 1 else average_probabilities(members)
    if out is None:
        folder = paths[0].resolve().parent.parent if len(paths) == 1 else Path(os.path.commonpath([p.resolve() for p in paths]))
        stem = "predictions" + (f"_ensemble{len(paths)}" if len(paths) > 1 else "")
        stem += "_images" if images is not None else f"_{source}_{split}"
        out = folder / (stem + (f"_tta{tta}" if tta > 1 else "") + ".csv")
    labels = np.array([records[i].label for i in index])
    fields = default_subgroup_fields(source, {key for r in records for key in r.meta})
    path = write_predictions(out, [records[i].image_id for i in index], probs, modules[0].class_names,
                             None if (labels == UNLABELED).all() else labels, [records[i].group for i in index],
                             {f: [records[i].meta.get(f) for i in index] for f in fields})  # fmt: skip
    used = (f"an ensemble of {len(paths)} checkpoints (probabilities averaged)" if len(paths) > 1
            else f"checkpoint {paths[0]}")  # fmt: skip
    views = f"{tta} test-time views of each image averaged" if tta > 1 else "no test-time augmentation"
    print(f"predicted {len(index)} images of {source} ({'--images ' + str(images) if images else split}) with "
          f"{used}, {views}; wrote {path}")
    return path


def check_finite_probabilities(path: Path, member: tuple[np.ndarray, np.ndarray], records) -> None:
    """Refuse a checkpoint whose probabilities are NaN or infinite: averaged into an ensemble they
    would make every image's NaN, and the prediction the first class, without a word."""
    index, probs = member
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        example = records[int(index[np.flatnonzero(bad)[0]])].image_id
        raise NonFiniteError(f"checkpoint {path} gives NaN or infinite probabilities for {int(bad.sum())} of "
                             f"{len(index)} images (e.g. {example}); its run diverged, so it is not used")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, nargs="+",
                        help="checkpoint(s) of training runs (best-*.ckpt, last.ckpt), or a folder of runs: "
                             "several are averaged (an ensemble)")
    parser.add_argument("--dataset", default=None, help="default: the dataset the model was trained on")
    parser.add_argument("--data-dir", default=None, help="default: the training data folder")
    parser.add_argument("--split", default="all", choices=["all", "train", "val", "test", "unlabeled"],
                        help="unlabeled: the challenge test set the dataset ships without labels")
    parser.add_argument("--images", default=None, help="predict every image under this folder instead (no metadata)")
    parser.add_argument("--out", default=None,
                        help="default: <run>/predictions_<dataset>_<split>.csv (--images: predictions_images.csv)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--tta", type=int, default=1, choices=TTA_VIEWS,
                        help="average over this many dihedral views of each image (8: all flips and transposes)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="ignore the temperature a calibrated checkpoint holds (--calibrate=temperature)")
    args = parser.parse_args(argv)
    predict(args.ckpt, args.dataset, args.data_dir, args.split, args.out, args.batch_size, args.num_workers,
            args.accelerator, args.images, args.tta, calibrated=not args.no_calibration)


if __name__ == "__main__":
    from datamodules.entry_point import run

    run(main)
