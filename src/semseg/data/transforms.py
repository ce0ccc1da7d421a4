"""Albumentations pipelines for training and evaluation, built from the data config.

Geometry (resize, pad, crop and the configured augmentations) is applied to image and mask in one
call, so they stay aligned; masks are resampled nearest-neighbour only and padded with the ignore
code, never with a real class.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2
from hydra.utils import instantiate

from semseg.data.batch import MASK_PAD_CODE
from semseg.errors import DataError


def _check_mask_interpolation(transform: A.BasicTransform) -> None:
    # A mask resampled with anything but nearest-neighbour invents class indices between classes.
    interpolation = getattr(transform, "mask_interpolation", cv2.INTER_NEAREST)
    if interpolation != cv2.INTER_NEAREST:
        raise DataError(
            f"augmentation {type(transform).__name__} resamples masks with interpolation "
            f"{interpolation}; set mask_interpolation: 0 (nearest) in its data.augment entry."
        )


def build_augmentations(specs: Sequence | None) -> list[A.BasicTransform]:
    """Instantiates ``data.augment`` (a list of albumentations ``_target_`` entries)."""
    transforms = [instantiate(spec, _convert_="all") for spec in (specs or [])]
    for transform in transforms:
        _check_mask_interpolation(transform)
        if hasattr(transform, "fill_mask"):
            # Any padding a geometric transform adds to a mask must be ignored, not a class.
            transform.fill_mask = MASK_PAD_CODE
    return transforms


def resize_transform(image_size: Sequence[int]) -> A.Resize:
    """Resizing to ``[H, W]``: bilinear for images, nearest-neighbour for masks."""
    height, width = image_size
    return A.Resize(height, width, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)


def build_transforms(
    *,
    train: bool,
    crop_size: Sequence[int] | None = None,
    augment: Sequence | None = None,
    seed: int | None = None,
) -> A.Compose:
    """The per-epoch steps of one stage, after a sample is decoded and resized
    (``semseg.data.samples``); images stay uint8 (normalised on the device, ``BatchPreparer``).

    Args:
        train: adds the random crop and the augmentations; evaluation only makes tensors.
        crop_size: ``[H, W]`` random training crop (images smaller than it are padded); None: none.
        augment: ``data.augment`` entries, applied in training only.
        seed: seed of the pipeline's own random state (albumentations ignores the global seeds);
            None draws a fresh one, and the augmentations differ from run to run.
    """
    steps: list[A.BasicTransform] = []
    if train and crop_size is not None:
        height, width = crop_size
        steps += [
            A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=MASK_PAD_CODE),
            A.RandomCrop(height, width),
        ]
    if train:
        steps += build_augmentations(augment)
    steps.append(ToTensorV2())
    return A.Compose(steps, seed=seed)
