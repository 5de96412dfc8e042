"""Albumentations 2.x pipelines: the ISIC 2020 winners' training recipe, and plain eval.

Images are resized first and augmented at the training resolution: the recipe resizes last,
which costs seconds per image on full-resolution ISIC photos for no benefit in what the
network sees. Masks, when given, follow every geometric transform.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RECIPES = ("isic", "light", "none")


def build_transforms(
    train: bool, image_size: int, recipe: str = "isic", mean=IMAGENET_MEAN, std=IMAGENET_STD
) -> A.Compose:
    if recipe not in RECIPES:
        raise ValueError(f"augmentation recipe must be one of {RECIPES}, got {recipe!r}")
    steps: list = [A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)]
    if train and recipe == "isic":
        steps += isic_winners_recipe(image_size)
    elif train and recipe == "light":
        steps += [
            A.Transpose(p=0.5),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-15, 15), p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        ]
    steps += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return A.Compose(steps)


def isic_winners_recipe(image_size: int) -> list:
    """SIIM-ISIC 2020 first place (Ha, Liu, Liu), in albumentations 2.x names."""
    return [
        A.Transpose(p=0.5),
        A.VerticalFlip(p=0.5),
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.75),
        A.OneOf(
            [
                A.MotionBlur(blur_limit=5),
                A.MedianBlur(blur_limit=5),
                A.GaussianBlur(blur_limit=(3, 5)),
                A.GaussNoise(std_range=(0.01, 0.02)),
            ],
            p=0.7,
        ),
        A.OneOf(
            [
                A.OpticalDistortion(distort_limit=1.0),
                A.GridDistortion(num_steps=5, distort_limit=1.0),
                A.ElasticTransform(alpha=3),
            ],
            p=0.7,
        ),
        A.CLAHE(clip_limit=4.0, p=0.7),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.5),
        A.Affine(
            translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-15, 15),
            border_mode=cv2.BORDER_CONSTANT, p=0.85,
        ),  # fmt: skip
        A.CoarseDropout(
            num_holes_range=(1, 1), hole_height_range=(0.375, 0.375), hole_width_range=(0.375, 0.375), p=0.7
        ),
    ]
