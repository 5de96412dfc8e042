"""record -> (image, metadata vector, label[, lesion mask]) as a dict of tensors."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from datamodules.metadata import MetadataEncoder
from datamodules.hdf5_images import read_bytes
from datamodules.records import DatasetError, LesionRecord, image_location, split_location
from datamodules.seeding import SampleKey, seed_transform


def load_rgb(
    path: Path, dataset: str = "dataset", line: Optional[int] = None, min_side: Optional[int] = None,
    key: Optional[str] = None,
) -> np.ndarray:
    """Any PNG/JPEG as an RGB uint8 array: EXIF rotation applied; RGBA, palette, grayscale,
    16-bit converted. A missing or unreadable file names itself and its CSV line.

    ``key``: the image is the bytes stored under ``key`` in the HDF5 file ``path`` (also given as
    one ``file.hdf5::key`` location, as ``LesionRecord.original_path`` names it); decoded the same way.

    ``min_side``: JPEGs may be decoded at a reduced scale that keeps both sides at least this
    long (libjpeg's DCT scaling): full-resolution ISIC photos decode several times faster.
    """
    if key is None:
        path, key = split_location(path)
    where = f" (listed on line {line})" if line is not None else ""
    name = image_location(path, key)
    try:
        if key is not None:
            try:
                source = io.BytesIO(read_bytes(path, key))
            except DatasetError as err:
                raise DatasetError(f"{dataset}: {err}{where}") from None
        else:
            source = path
        with Image.open(source) as image:
            if min_side and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image)
            elif image.mode in ("I;16", "I;16B", "I"):
                # 16-bit pictures: scale the full 16-bit range (not the picture's own maximum, which
                # would make brightness depend on content).
                array = np.asarray(image, dtype=np.float32)
                image = Image.fromarray(np.clip(array / 257.0, 0, 255).astype(np.uint8))
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{dataset}: image file {path} does not exist{where}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"{dataset}: cannot read image {name}{where}: {err}") from err


def load_mask(path: Path, dataset: str = "dataset", shape: Optional[tuple[int, int]] = None) -> np.ndarray:
    """A lesion mask as (H, W) uint8 in {0, 1} (any mode: 0/255 PNG, 1-bit BMP, RGB).

    ``shape``: the (H, W) its image was decoded at. A mask of another size but the same aspect ratio
    (within a pixel) is resized to it with nearest neighbour, so it stays binary: a JPEG decoded at
    a reduced scale (``load_rgb``'s ``min_side``) is smaller than its full-size mask. A mask of
    another aspect ratio belongs to another picture and is an error."""
    try:
        with Image.open(path) as image:
            mask = image.convert("L")
            if shape is not None and mask.size != (shape[1], shape[0]):
                width, height = mask.size
                if abs(height * shape[1] / width - shape[0]) > 1:
                    raise DatasetError(f"{dataset}: mask {path} is {height} x {width} px, its image {shape[0]} x "
                                       f"{shape[1]} px (another aspect ratio: not this image's mask)")
                mask = mask.resize((shape[1], shape[0]), Image.NEAREST)
            return (np.asarray(mask) > 127).astype(np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"{dataset}: cannot read lesion mask {path}: {err}") from err


class LesionDataset(Dataset):
    """Items are dicts: ``image`` (3,H,W) float, ``meta`` (D,) float, ``label`` long, ``index``
    (position in ``records``, to trace predictions back to image ids) and, with ``load_masks`` when
    every record has one, ``mask`` (H,W) float in {0, 1}.

    Keys are indices, or ``SampleKey``s from the training samplers: those seed the transform for
    that one image, so an image's augmentation depends on the key alone, not on which worker
    loads it or what was loaded before.
    """

    def __init__(
        self,
        records: Sequence[LesionRecord],
        encoder: MetadataEncoder,
        transform,
        dataset: str = "dataset",
        load_masks: bool = True,
        image_size: Optional[int] = None,
        small_images: str = "error",
    ):
        """``small_images``:
        what an image far smaller than ``image_size`` (shorter side under a quarter of it) gets:
        ``error`` (training: such a file is almost always a mistake, a thumbnail or a broken
        export) or ``warn`` (prediction: it is still predicted, but the user should know)."""
        if small_images not in ("error", "warn"):
            raise ValueError(f"small_images must be 'error' or 'warn', got {small_images!r}")
        self.small_images = small_images
        self.records = list(records)
        self.encoder = encoder  # shared: a checkpoint's encoder, once loaded, applies at once
        self.transform = transform
        self.dataset = dataset
        self.image_size = image_size
        self.with_masks = load_masks and bool(self.records) and all(r.mask_path is not None for r in self.records)

    def _small_image(self, record: LesionRecord, shape: tuple[int, int]) -> None:
        where = f" (CSV line {record.line})" if record.line else ""
        message = (f"{self.dataset}: {record.location}{where} is {shape[1]} x {shape[0]} px, far smaller than "
                   f"the {self.image_size} px it is resized to")
        if self.small_images == "error":
            raise DatasetError(f"{message}; remove it from the data or lower --data.image_size")
        warnings.warn(f"{message}; its prediction rests on an upsampled blur", stacklevel=3)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict:
        if isinstance(key, SampleKey):
            index = key.index
            seed_transform(self.transform, key.seed)
        else:
            index = int(key)
        record = self.records[index]
        # Decode at no less than twice the training size: the resize then still anti-aliases.
        min_side = 2 * self.image_size if self.image_size else None
        image = load_rgb(record.image_path, self.dataset, record.line, min_side, record.image_key)
        if self.image_size and 4 * min(image.shape[:2]) < self.image_size:
            self._small_image(record, image.shape[:2])
        if self.with_masks:
            mask = load_mask(record.mask_path, self.dataset, image.shape[:2])
            out = self.transform(image=image, mask=mask)
        else:
            out = self.transform(image=image)
        item = {
            "image": out["image"],
            "meta": torch.from_numpy(self.encoder.encode(record.meta)),
            "label": torch.tensor(record.label, dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }
        if self.with_masks:
            item["mask"] = torch.as_tensor(out["mask"], dtype=torch.float32)
        return item
