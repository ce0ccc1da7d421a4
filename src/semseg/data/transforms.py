"""Albumentations pipelines for training and evaluation, built from the data config.

Geometry (resize, pad, crop and the configured augmentations) is applied to image and mask in one
call, so they stay aligned; masks are resampled nearest-neighbour only and padded with the ignore
code, never with a real class.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2
from hydra.utils import instantiate
from omegaconf import OmegaConf

from semseg.config_resolvers import CONF_DIR
from semseg.data.mask_codes import MASK_PAD_CODE
from semseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# The augment group's presets (none, hflip, rotations, street, elastic), also named by data.augment.
AUGMENT_PRESETS = CONF_DIR / "augment"

# The D4 elements that keep an image's height and width: identity, half turn, the two flips.
_SHAPE_KEEPING_D4 = ("e", "r180", "v", "h")
# Albumentations transforms that turn a non-square sample on its side (H x W -> W x H).
_SHAPE_TURNING = (A.RandomRotate90, A.D4, A.Transpose)


class ShapeKeepingD4(A.D4):
    """Flips and 90-degree rotations (the dihedral group D4, as ``albumentations.D4``) that keep
    every sample's shape: a square sample gets any of the 8 elements, a non-square one only the 4
    that keep height and width (identity, half turn, flips).

    Written here because albumentations' rotations turn an H x W sample into W x H, and a batch
    mixing both is padded to a square: a third more pixels at 192x256, all ignored.
    """

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        if height == width:
            return {}
        return {"group_element": self.random_generator.choice(_SHAPE_KEEPING_D4)}


def _warn_if_shape_turning(transforms: Sequence[A.BasicTransform], sample_size: Sequence[int] | None) -> None:
    # Unless every sample is a known square, a 90-degree turn may change a sample's shape.
    if sample_size is not None and sample_size[0] == sample_size[1]:
        return
    for transform in transforms:
        if isinstance(transform, _SHAPE_TURNING) and not isinstance(transform, ShapeKeepingD4):
            log.warning(
                f"data.augment: {type(transform).__name__} turns non-square samples on their side, and a "
                "batch mixing both shapes is padded to a square (the padding is ignored, but computed). "
                "augment=rotations (semseg.data.transforms.ShapeKeepingD4) rotates only square samples."
            )


def _check_mask_interpolation(transform: A.BasicTransform) -> None:
    # A mask resampled with anything but nearest-neighbour invents class indices between classes.
    interpolation = getattr(transform, "mask_interpolation", cv2.INTER_NEAREST)
    if interpolation != cv2.INTER_NEAREST:
        raise DataError(
            f"augmentation {type(transform).__name__} resamples masks with interpolation "
            f"{interpolation}; set mask_interpolation: 0 (nearest) in its data.augment entry."
        )


def augment_preset(name: str) -> list:
    """The entries of the augment preset ``name`` (conf/augment/<name>.yaml)."""
    path = AUGMENT_PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in AUGMENT_PRESETS.glob("*.yaml"))) or f"none found in {AUGMENT_PRESETS}"
        raise DataError(f"data.augment={name}: no such augment preset (presets: {known}); or give a list of entries.")
    return OmegaConf.to_container(OmegaConf.load(path))["augment"]


def build_augmentations(
    specs: Sequence | str | None, sample_size: Sequence[int] | None = None
) -> list[A.BasicTransform]:
    """Instantiates ``data.augment``: a preset name (conf/augment/) or a list of albumentations
    ``_target_`` entries. ``sample_size``: ``[H, W]`` of every sample when known (crop or resize)."""
    if isinstance(specs, str):
        specs = augment_preset(specs)
    transforms = [instantiate(spec, _convert_="all") for spec in (specs or [])]
    _warn_if_shape_turning(transforms, sample_size)
    for transform in transforms:
        _check_mask_interpolation(transform)
        if hasattr(transform, "fill_mask"):
            # Any padding a geometric transform adds to a mask must be ignored, not a class.
            transform.fill_mask = MASK_PAD_CODE
    return transforms


def check_augmentations(pipeline: A.Compose, image: np.ndarray, mask: np.ndarray | None) -> None:
    """Runs each step of a training ``pipeline`` once (a copy, certain to apply) on a sample of the
    data, so that an augmentation that cannot take its depth or bands stops the run at start-up,
    named, rather than a loader worker in the first epoch. Albumentations' colour transforms take
    1 or 3 channels and most of them 8 bits only; its geometric ones take anything.

    Raises:
        ConfigError: a step that raises or changes the image's type, with the fix.
    """
    described = f"{image.dtype} images of {image.shape[2]} band(s)"
    for step in pipeline.transforms:
        if isinstance(step, ToTensorV2):
            continue
        trial = copy.deepcopy(step)
        trial.p = 1.0
        try:
            out = trial(image=image, mask=mask) if mask is not None else trial(image=image)
        except Exception as error:  # albumentations and OpenCV raise many kinds for a type they refuse
            raise ConfigError(
                f"data.augment: {type(step).__name__} cannot augment {described} ({error}). Leave it out of "
                "data.augment: flips, rotations, crops, Affine, ElasticTransform and RandomBrightnessContrast "
                "take any depth and bands."
            ) from error
        if out["image"].dtype != image.dtype or out["image"].shape[2:] != image.shape[2:]:
            raise ConfigError(
                f"data.augment: {type(step).__name__} turns {described} into {out['image'].dtype} images of "
                f"{out['image'].shape[2:] or (1,)} band(s); leave it out of data.augment."
            )


def resize_transform(image_size: Sequence[int]) -> A.Resize:
    """Resizing to ``[H, W]``: bilinear for images, nearest-neighbour for masks."""
    height, width = image_size
    return A.Resize(height, width, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)


def build_transforms(
    *,
    train: bool,
    crop_size: Sequence[int] | None = None,
    augment: Sequence | str | None = None,
    seed: int | None = None,
    image_size: Sequence[int] | None = None,
) -> A.Compose:
    """The per-epoch steps of one stage, after a sample is decoded and resized
    (``semseg.data.samples``); images stay uint8 (normalised on the device, ``BatchPreparer``).

    Args:
        train: adds the random crop and the augmentations; evaluation only makes tensors.
        crop_size: ``[H, W]`` random training crop (images smaller than it are padded); None: none.
        augment: ``data.augment`` (a preset name or entries), applied in training only.
        seed: seed of the pipeline's own random state (albumentations ignores the global seeds);
            None draws a fresh one, and the augmentations differ from run to run.
        image_size: ``[H, W]`` every sample was resized to (``data.image_size``), when one.
    """
    steps: list[A.BasicTransform] = []
    if train and crop_size is not None:
        height, width = crop_size
        steps += [
            A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=MASK_PAD_CODE),
            A.RandomCrop(height, width),
        ]
    if train:
        steps += build_augmentations(augment, sample_size=crop_size or image_size)
    steps.append(ToTensorV2())
    return A.Compose(steps, seed=seed)
