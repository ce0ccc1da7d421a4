"""The Dataset of one split: samples from their source, then the per-epoch random augmentations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from semseg.data.sampling import sample_seed


class SegmentationDataset(Dataset):
    """Samples of one split: decoded, encoded and resized by ``source`` (from the files or from a
    cache, see ``semseg.data.samples``), then the per-epoch random steps of ``transform``.

    Each item is a dict: ``image`` (uint8 C x H x W), ``mask`` (uint8 H x W class codes,
    ``MASK_PAD_CODE`` where ignored; absent for unlabelled splits), ``name`` (file stem). Batches
    stay uint8 until they are on the training device (``semseg.data.batch.BatchPreparer``).
    Indexed by ``(index, epoch)`` (what ``EpochSampler`` yields), the augmentations are reseeded
    from ``(seed, epoch, index)`` first, so a sample's augmentation never depends on which worker
    reads it or on what that worker read before.
    """

    def __init__(self, pairs: list[tuple[Path, Path | None]], source, transform: Callable[..., dict], seed: int = 0):
        self.pairs = pairs
        self.source = source
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        if epoch is not None:
            self.transform.set_random_seed(sample_seed(self.seed, epoch, index))
        image, mask = self.source[index]
        name = self.pairs[index][0].stem
        if mask is None:
            return {"image": self.transform(image=image)["image"], "name": name}
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": out["mask"], "name": name}
