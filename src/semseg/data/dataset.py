"""The Dataset of one split: samples from their source, then the per-epoch random augmentations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from semseg.data.rare_class import RareClassDraw, crop_around_class
from semseg.data.sampling import sample_seed


class SegmentationDataset(Dataset):
    """Samples of one split: decoded, encoded and resized by ``source`` (from the files or from a
    cache, see ``semseg.data.samples``), then the per-epoch random steps of ``transform``.

    Each item is a dict: ``image`` (uint8 C x H x W), ``mask`` (uint8 H x W class codes,
    ``MASK_PAD_CODE`` where ignored; absent for unlabelled splits), ``name`` (file stem). Batches
    stay uint8 until they are on the training device (``semseg.data.batch.BatchPreparer``).
    Indexed by ``(index, epoch)`` (what ``EpochSampler`` yields), the augmentations are reseeded
    from ``(seed, epoch, index)`` first, so a sample's augmentation never depends on which worker
    reads it or on what that worker read before. Indexed by a ``RareClassDraw``, the draw's
    position joins that seed, and ``class_crop`` = [H, W] cuts a window around the drawn class first.
    """

    def __init__(
        self,
        pairs: list[tuple[Path, Path | None]],
        source,
        transform: Callable[..., dict],
        seed: int = 0,
        class_crop: Sequence[int] | None = None,
    ):
        self.pairs = pairs
        self.source = source
        self.transform = transform
        self.seed = seed
        self.class_crop = class_crop

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int] | RareClassDraw) -> dict:
        draw = key if isinstance(key, RareClassDraw) else None
        index, epoch = key[:2] if isinstance(key, tuple) else (key, None)
        if epoch is not None:
            seed = sample_seed(self.seed, epoch, index, *(() if draw is None else (draw.position,)))
            self.transform.set_random_seed(seed)
        image, mask = self.source[index]
        if draw is not None and self.class_crop is not None:
            # A child stream of the sample's seed: albumentations draws from default_rng(seed) itself.
            rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
            image, mask = crop_around_class(image, mask, draw.cls, self.class_crop, rng)
        name = self.pairs[index][0].stem
        if mask is None:
            return {"image": self.transform(image=image)["image"], "name": name}
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": out["mask"], "name": name}
