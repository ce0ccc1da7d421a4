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

from semseg.data.dataset import MASK_PAD_CODE
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


def build_transforms(
    *,
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: Sequence[int] | None = None,
    crop_size: Sequence[int] | None = None,
    augment: Sequence | None = None,
    seed: int | None = None,
) -> A.Compose:
    """The pipeline for one stage.

    Args:
        train: adds the random crop and the augmentations.
        mean: per-channel mean in 0..1 units (as the encoder was trained).
        std: per-channel std in 0..1 units.
        image_size: ``[H, W]`` every image and mask is resized to; None keeps each own size.
        crop_size: ``[H, W]`` random training crop (images smaller than it are padded); None: none.
        augment: ``data.augment`` entries, applied in training only.
        seed: seed of the pipeline's own random state (albumentations ignores the global seeds);
            None draws a fresh one, and the augmentations differ from run to run.
    """
    steps: list[A.BasicTransform] = []
    if image_size is not None:
        height, width = image_size
        steps.append(A.Resize(height, width, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    if train and crop_size is not None:
        height, width = crop_size
        steps += [
            A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=MASK_PAD_CODE),
            A.RandomCrop(height, width),
        ]
    if train:
        steps += build_augmentations(augment)
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps, seed=seed)
