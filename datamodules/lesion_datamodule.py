"""The LightningDataModule that ties reader, split, metadata encoder and transforms together.

Flow: ``read_table`` (CSV rows -> records, ``sources/cleaning.py``, the resized-image cache) ->
``split_indices`` (patient-grouped folds; or the dataset's own split, ``official_indices``) ->
``MetadataEncoder.fit`` on the training records ->
``LesionDataset`` per split; training batches are drawn as ``samplers.TrainingSampling`` says.

The model needs ``num_classes``, ``meta_dim``, ``class_names`` and ``class_weights`` before it is
built; they are properties here that load the table on first access (the CLI links them into
the model's arguments).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Optional, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader, default_collate

from datamodules.arguments import check_choice, check_int, check_number
from datamodules.dataset import LesionDataset
from datamodules.description import DataDescription
from datamodules.image_cache import StaleCache, apply_cache, find_cache
from datamodules.metadata import MetadataEncoder
from datamodules.records import DatasetError, LesionRecord, LesionTable
from datamodules.samplers import TrainingSampling
from datamodules.seeding import TrainPosition, run_seed, seed_transform
from datamodules.sources import DATASETS, MISSING_IMAGES_ALLOWED, OFFICIAL_SPLITS, read_table
from datamodules.sources.cleaning import drop_rare_classes, verify_images
from datamodules.splits import SPLIT_MODES, SPLITS, check_group_by, official_indices, split_indices
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, RECIPES, build_transforms


def check_data_options(options: dict[str, Any]) -> None:
    """The datamodule's arguments, each within what it allows (the message names the option)."""
    check_int("--data.batch_size", options["batch_size"], minimum=1)
    check_int("--data.eval_batch_size", options["eval_batch_size"], minimum=1, optional=True)
    check_int("--data.image_size", options["image_size"], minimum=1)
    check_int("--data.num_workers", options["num_workers"], minimum=0)
    check_int("--data.n_folds", options["n_folds"], minimum=3)  # a test, a validation and a training fold
    check_int("--data.fold", options["fold"], minimum=0, maximum=options["n_folds"] - 1)
    check_int("--data.split_seed", options["split_seed"])
    check_int("--data.min_class_images", options["min_class_images"], minimum=0)
    check_choice("--data.augment", options["augment"], RECIPES)
    check_choice("--data.split", options["split"], SPLIT_MODES)
    check_choice("--data.small_images", options["small_images"], ("error", "warn"))
    for name in ("normalize_mean", "normalize_std"):
        if len(options[name]) != 3:
            raise ValueError(f"--data.{name}={list(options[name])!r}: must be three numbers (R, G, B)")
    for value in options["normalize_std"]:
        check_number("--data.normalize_std", value, above=0)


class LesionDataModule(L.LightningDataModule):
    def __init__(
        self,
        dataset: str = "synthetic",
        data_dir: Optional[str] = None,
        source_options: Optional[dict[str, Any]] = None,
        allow_missing_images: bool = False,
        meta_features: Optional[list[str]] = None,
        fold: int = 0,
        n_folds: int = 5,
        split_seed: int = 0,
        split: str = "folds",
        image_size: int = 224,
        augment: str = "isic",
        normalize_mean: tuple[float, float, float] = IMAGENET_MEAN,
        normalize_std: tuple[float, float, float] = IMAGENET_STD,
        balanced_sampler: bool = False,
        batch_size: int = 32,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 2,
        predict_split: str = "test",
        load_masks: bool = False,
        min_class_images: int = 0,
        verify_images: bool = False,
        pk_batches: Optional[tuple[int, int]] = None,
        small_images: str = "error",
        oversample: Optional[dict[str, float]] = None,
        image_cache: bool = True,
        group_by: Optional[str] = None,
        negatives_per_epoch: Optional[int] = None,
    ):
        """
        Args:
            dataset: ``synthetic`` (built in, generated on first use) or a reader's name
                (``datamodules.sources.DATASETS``: ``pad_ufes20``, ``isic2019``, ``isic2017``, ...).
            data_dir: the dataset's folder as downloaded; for ``synthetic``, the cache root
                (default ``~/.cache/dermattn`` or ``$DERMATTN_CACHE``).
            source_options: reader options, e.g. ``{task: diagnosis}`` for ISIC 2020,
                ``{patient_relative: true}`` for ISIC 2024 or ``{n_patients: 600, seed: 1}`` for the
                synthetic generator.
            allow_missing_images: rows whose image was never downloaded are left out with a warning
                that counts them, instead of an error listing them (datasets whose readers offer it:
                ``datamodules.sources.MISSING_IMAGES_ALLOWED``, i.e. Fitzpatrick17k's dead URLs).
            meta_features: metadata columns to use (``[]`` for none); ``None`` is the dataset's
                published default set.
            fold: which of ``n_folds`` patient-grouped folds is the test split (the next one is
                validation).
            split: ``folds`` (those grouped folds) or ``official``: the train / validation / test
                sets the dataset ships (``datamodules.sources.OFFICIAL_SPLITS`` names the datasets
                that have one); ``fold``, ``n_folds`` and ``split_seed`` are then not used.
            balanced_sampler: draw training batches with inverse class-frequency weights.
            predict_split: records used by ``predict``: ``train``, ``val``, ``test`` or ``all``.
            load_masks: add each image's lesion mask to the batch (datasets that have masks).
            min_class_images: drop classes with fewer images (e.g. ISIC 2020's one-image
                diagnoses); the dropped classes and image counts are reported. 0 keeps all.
            verify_images: decode every image once in ``prepare_data`` and report all unreadable
                files together, before training starts.
            pk_batches: ``[P, K]``: training batches of P classes x K images (metric learning needs
                positive pairs in every batch); ``batch_size`` is then ignored for training.
            small_images: an image whose shorter side is under a quarter of ``image_size`` is an
                ``error`` (training) or a ``warn``-ing (prediction sets this).
            oversample: ``{class: factor}``: draw training images of these classes ``factor`` times
                as often as the others (AttnMel oversampled melanoma x4: ``{MEL: 4}``), with
                replacement, as many draws per epoch as there are training images.
            image_cache: use a current resized cache of at least ``image_size`` when one exists
                (``make preprocess DATA=... DATA_DIR=... SIZE=512``; see ``datamodules/image_cache.py``):
                the smallest such cache under ``$DERMATTN_CACHE`` (or ``~/.cache/dermattn``); a cache
                whose source files changed is an error. ``false`` always reads the original images.
            group_by: split by this metadata column instead of by patient/lesion (``attribution``:
                ISIC 2024's hospitals, each held out whole); patients still never span two splits.
            negatives_per_epoch: each training epoch takes every image outside the largest class
                (for binary data: every positive) and this many of the largest class, a different,
                seed-determined draw every epoch (``samplers.NegativeSubsampler``).
        """
        super().__init__()
        if dataset not in DATASETS:
            raise DatasetError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
        check_data_options(locals())
        if allow_missing_images and dataset not in MISSING_IMAGES_ALLOWED:
            raise ValueError(f"--data.allow_missing_images=true: {dataset}'s reader needs every listed image; "
                             f"datasets whose rows may lack one: {list(MISSING_IMAGES_ALLOWED)}")
        if allow_missing_images:  # a reader option: the image cache, make preprocess and resume keep it with the rest
            source_options = {**(source_options or {}), "allow_missing_images": True}
        if split == "official" and dataset not in OFFICIAL_SPLITS:
            raise DatasetError(f"{dataset} ships no official split; datasets that do: {list(OFFICIAL_SPLITS)} "
                               "(--data.split=folds makes patient-grouped folds)")
        self.sampling = TrainingSampling(balanced_sampler, oversample, pk_batches, negatives_per_epoch)
        if predict_split not in (*SPLITS, "all"):
            raise ValueError(f"predict_split must be one of {(*SPLITS, 'all')}, got {predict_split!r}")
        self.save_hyperparameters()
        self.datasets: dict[str, LesionDataset] = {}
        self._resume_at: Optional[TrainPosition] = None  # a resumed run's (resume_training_at)
        self._eval_datasets: dict[str, LesionDataset] = {}  # for eval_batch

    # -- records, splits and the metadata encoder (loaded once, on first use) -------------------
    @cached_property
    def table(self) -> LesionTable:
        hp = self.hparams
        table = read_table(hp.dataset, hp.data_dir, **(hp.source_options or {}))
        table = drop_rare_classes(table, hp.min_class_images) if hp.min_class_images else table
        cache = find_cache(table, hp.image_size) if hp.image_cache else None
        if cache is None:
            return table
        try:
            table = apply_cache(table, cache)
        except StaleCache as err:
            # The entry point words the command; imported here as the error path alone needs it.
            from datamodules.preprocess import preprocess_command

            raise DatasetError(f"{err}. Re-run `{preprocess_command(err.build)}` to rebuild it, or pass "
                               "--data.image_cache=false to read the original images") from None
        rank_zero_info(f"{hp.dataset}: reading resized images from {cache} (--data.image_cache=false: the originals)")
        return table

    @cached_property
    def split_records(self) -> dict[str, list[LesionRecord]]:
        hp = self.hparams
        if hp.split == "official":
            rank_zero_info(f"{hp.dataset}: the official train / validation / test split (fold, n_folds and split_seed "
                           "are not used)")
            indices = official_indices(self.table.records, hp.dataset)
        else:
            check_group_by(self.table, hp.group_by)
            indices = split_indices(self.table.records, hp.fold, hp.n_folds, hp.split_seed, hp.dataset,
                                    hp.group_by)
        out = {name: [self.table.records[i] for i in idx] for name, idx in indices.items()}
        for split, records in out.items():
            present = {r.label for r in records}
            absent = [name for k, name in enumerate(self.table.class_names) if k not in present]
            if absent:  # an absent class would score AUROC 0 and drag the macro average down
                where = (f"the official {split} split;" if hp.split == "official"
                         else f"the {split} split of fold {hp.fold}/{hp.n_folds}; use fewer folds or")
                raise DatasetError(f"{hp.dataset}: class(es) {absent} have no image in {where} drop rare classes "
                                   "(--data.min_class_images=N)")
        return out

    @cached_property
    def encoder(self) -> MetadataEncoder:
        numeric, categorical = self.table.split_features(self.hparams.meta_features)
        return MetadataEncoder(numeric, categorical).fit(self.split_records["train"])

    @property
    def num_classes(self) -> int:
        return len(self.table.class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self.table.class_names)

    @property
    def meta_dim(self) -> int:
        return self.encoder.dim

    @property
    def class_weights(self) -> list[float]:
        """``n / (K * n_c)`` on the training split (scikit-learn's "balanced" weights): a
        class-frequency-weighted loss."""
        labels = [r.label for r in self.split_records["train"]]
        weights = compute_class_weight("balanced", classes=np.arange(self.num_classes), y=labels)
        return [float(w) for w in weights]

    def records(self, split: str) -> list[LesionRecord]:
        # "all" needs no split: predicting on a new dataset must not require a valid K-fold.
        return list(self.table.records) if split == "all" else self.split_records[split]

    # -- Lightning hooks -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Generates the synthetic data (once, in the cache) or validates the CSVs and image files.
        if self.hparams.verify_images:
            verify_images(self.table)
        else:
            _ = self.table

    def setup(self, stage: Optional[str] = None) -> None:
        hp = self.hparams
        eval_tf = build_transforms(False, hp.image_size, hp.augment, hp.normalize_mean, hp.normalize_std)
        train_tf = build_transforms(True, hp.image_size, hp.augment, hp.normalize_mean, hp.normalize_std)
        # Training items are seeded one by one by the sampler (SampleKey); this only fixes the
        # stream for code that indexes the training set with plain integers.
        seed_transform(train_tf, run_seed())
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": (hp.predict_split,)}
        for split in wanted.get(stage, (*SPLITS, hp.predict_split)):
            transform = train_tf if split == "train" else eval_tf
            self.datasets[split] = LesionDataset(
                self.records(split), self.encoder, transform, hp.dataset, hp.load_masks, hp.image_size,
                hp.small_images,
            )

    def _loader(self, split: str) -> DataLoader:
        hp = self.hparams
        return DataLoader(self.datasets[split], batch_size=hp.eval_batch_size or hp.batch_size,
                          num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0,
                          pin_memory=torch.cuda.is_available(), generator=self._loader_generator())

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        world_size, rank = self._world()
        batches = self.sampling.loader_arguments(
            [r.label for r in self.records("train")], num_samples=len(self.datasets["train"]),
            batch_size=hp.batch_size, seed=run_seed(), position=self._resume_position(), world_size=world_size,
            rank=rank, class_names=self.class_names, dataset=hp.dataset,
        )
        return DataLoader(self.datasets["train"], **batches, num_workers=hp.num_workers,
                          persistent_workers=hp.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          generator=self._loader_generator())

    def resume_training_at(self, position: TrainPosition) -> None:
        """Start the training sampler at ``position`` (a resumed run's epoch and batches of it
        done); called when a checkpoint is restored, before Lightning makes the training loader."""
        self._resume_at = TrainPosition(*position)

    def _resume_position(self) -> TrainPosition:
        """The (epoch, batches done) to start from: a resumed run's (``resume_training_at``), else
        the trainer's epoch. Read when the training loader is made, which Lightning does once, after
        restoring a checkpoint and before the loader's first iterator (with workers, that iterator
        draws indices at once, before Lightning's first ``set_epoch``)."""
        if self._resume_at is not None:
            return self._resume_at
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return TrainPosition(epoch, 0)

    def _world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 1, 0
        return int(self.trainer.world_size), int(self.trainer.global_rank)

    @staticmethod
    def _loader_generator() -> torch.Generator:
        """The DataLoader's own generator (it seeds the workers): without one, each iterator draws
        its base seed from the global torch RNG and so shifts the model's random stream."""
        return torch.Generator().manual_seed(run_seed())

    def eval_dataloader(self, split: str) -> DataLoader:
        """Any split with the evaluation transform (e.g. the training images as a retrieval bank)."""
        return self.records_dataloader(self.records(split), self.encoder, self.hparams.dataset)

    def records_dataloader(self, records: list[LesionRecord], encoder: MetadataEncoder, dataset: str) -> DataLoader:
        """Any records (a split, an unlabeled test set, a folder of new images) with this data's
        evaluation transform and the given (trained) metadata encoder."""
        hp = self.hparams
        data = LesionDataset(records, encoder, self.eval_transform(), dataset, False, hp.image_size,
                             small_images=hp.small_images)
        return DataLoader(data, batch_size=hp.eval_batch_size or hp.batch_size, num_workers=hp.num_workers)

    def eval_transform(self):
        """The evaluation transform (resize, normalise): how the model sees any image."""
        hp = self.hparams
        return build_transforms(False, hp.image_size, hp.augment, hp.normalize_mean, hp.normalize_std)

    def oversampling_factors(self) -> np.ndarray:
        """(K,) sampling weight of each class under ``oversample`` (1 for classes it does not name)."""
        return self.sampling.class_factors(self.class_names, self.hparams.dataset)

    def eval_batch(self, split: str, indices: Sequence[int]) -> dict:
        """Items ``indices`` of ``split`` with the evaluation transform (and their lesion masks when
        ``load_masks``), collated into one batch (fixed images to draw attention on, a prototype's
        source image)."""
        if split not in self._eval_datasets:  # with the lesion masks when loaded: panels outline the lesion
            hp = self.hparams
            self._eval_datasets[split] = LesionDataset(self.records(split), self.encoder, self.eval_transform(),
                                                       hp.dataset, hp.load_masks, hp.image_size,
                                                       small_images=hp.small_images)  # fmt: skip
        dataset = self._eval_datasets[split]
        return default_collate([dataset[int(i)] for i in indices])

    def describe(self) -> DataDescription:
        """What models and callbacks may know about the data (see ``DataDescription``)."""
        hp = self.hparams
        return DataDescription(
            dataset=hp.dataset,
            class_names=tuple(self.class_names),
            image_size=int(hp.image_size),
            normalize_mean=tuple(float(v) for v in hp.normalize_mean),
            normalize_std=tuple(float(v) for v in hp.normalize_std),
            has_masks=bool(hp.load_masks) and all(r.mask_path is not None for r in self.records("train")),
        )

    def group_ids(self, split: str) -> torch.Tensor:
        """An integer per record of ``split`` naming its patient/lesion group (for retrieval)."""
        names = [r.group for r in self.records(split)]
        index = {name: i for i, name in enumerate(sorted(set(names)))}
        return torch.tensor([index[n] for n in names])

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split)

    # -- checkpoint state: the fitted encoder travels with the weights ------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.state_dict(),
            "class_names": self.class_names,
            "feature_names": self.encoder.feature_names,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["class_names"]) != self.class_names:
            raise DatasetError(
                f"checkpoint was trained on classes {state['class_names']}, "
                f"but {self.hparams.dataset} has {self.class_names}"
            )
        if "train_position" in state:  # checkpoints written before the trainer's checkpoint carried it
            self.resume_training_at(TrainPosition(*state["train_position"]))
        encoder = state["encoder"]
        self.table.split_features(list(encoder["numeric"]) + list(encoder["categorical"]))  # columns exist?
        if "encoder" in self.__dict__:
            # Datasets built in setup() hold this encoder: updating it in place reaches them.
            self.encoder.load_state_dict(encoder)
        else:  # no need to fit on a training split first (predicting on a new dataset)
            self.__dict__["encoder"] = MetadataEncoder.from_state_dict(encoder)

    def summary(self) -> dict[str, Any]:
        """What the run was trained on (printed at start, stored in metrics.json)."""
        hp = self.hparams
        return {
            "dataset": hp.dataset,
            "data_dir": str(self.table.folder),
            "images": len(self.table.records),
            "groups": len({r.group for r in self.table.records}),
            "class_names": self.class_names,
            "split_sizes": {s: len(self.records(s)) for s in SPLITS},
            "split": hp.split,
            "fold": hp.fold if hp.split == "folds" else None,
            "n_folds": hp.n_folds if hp.split == "folds" else None,
            "split_seed": hp.split_seed if hp.split == "folds" else None,
            **({"group_by": hp.group_by} if hp.group_by else {}),
            "meta_features": self.encoder.feature_names,
        }

