"""Batches as they travel: uint8 from the loader, float and class indices once on the device.

Loader workers hand over images and masks as uint8 (a 512x512 RGB sample is 1 MB instead of 3 MB
of float32 image plus 2 MB of int64 mask), pinned when a GPU trains, and ``BatchPreparer`` turns
them into what the network and the loss take, on the device, one batch at a time: images
normalised to float32, masks to int64 class indices with ``ignore_index`` where ignored. Nothing
of it runs per sample in the main process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Masks travel as uint8 class codes, where this value marks ignored pixels (stored ignore values
# and padding). It can never be a class: num_classes is at most 254.
MASK_PAD_CODE = 255


def pad_collate(batch: list[dict]) -> dict:
    """Stacks samples, padding images (0) and masks (``MASK_PAD_CODE``) to the largest in the batch.

    Needed when ``data.image_size`` is null and images differ in size; a batch of equal sizes is
    stacked as is.
    """
    height = max(item["image"].shape[-2] for item in batch)
    width = max(item["image"].shape[-1] for item in batch)

    def pad(tensor: torch.Tensor, value: int) -> torch.Tensor:
        bottom, right = height - tensor.shape[-2], width - tensor.shape[-1]
        return F.pad(tensor, (0, right, 0, bottom), value=value) if bottom or right else tensor

    out = {
        "image": torch.stack([pad(item["image"], 0) for item in batch]),
        "name": [item["name"] for item in batch],
    }
    if "mask" in batch[0]:
        out["mask"] = torch.stack([pad(_planes_first(item["mask"]), MASK_PAD_CODE) for item in batch])
    return out


def _planes_first(mask: torch.Tensor) -> torch.Tensor:
    """A multi-label mask's (H, W, K) planes (as albumentations keeps them) as (K, H, W)."""
    return mask.permute(2, 0, 1) if mask.dim() == 3 else mask


class BatchPreparer(nn.Module):
    """Turns a loader's uint8 batch into the network's input and the loss's target, on the batch's
    device: ``image`` (N, C, H, W) -> float32 ``(x / 255 - mean) / std``, exactly as
    albumentations' ``Normalize`` computes it; ``mask`` (N, H, W) uint8 codes (or a multi-label
    task's (N, K, H, W) 0/1 planes) -> int64, ``MASK_PAD_CODE`` -> ``ignore_index``. Images that
    are already floating point are taken as normalised and left alone, so preparing twice changes
    nothing.

    A module so that its constants follow the network to its device (buffers, not saved in
    checkpoints: they are derived from the hyper-parameters).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], ignore_index: int):
        super().__init__()
        shape = (1, len(mean), 1, 1)
        scale = torch.tensor(std, dtype=torch.float32).view(shape) * 255.0
        self.register_buffer("offset", torch.tensor(mean, dtype=torch.float32).view(shape) * 255.0, persistent=False)
        self.register_buffer("inverse_scale", scale.reciprocal(), persistent=False)
        self.ignore_index = int(ignore_index)

    def forward(self, batch: dict) -> dict:
        batch = dict(batch)
        image = batch["image"]
        if not image.is_floating_point():
            # .to: a no-op where the batch is on the module's device (training); a CPU copy otherwise.
            batch["image"] = (image.float() - self.offset.to(image.device)) * self.inverse_scale.to(image.device)
        mask = batch.get("mask")
        if mask is not None and mask.dtype == torch.uint8:
            mask = mask.long()
            if self.ignore_index != MASK_PAD_CODE:
                mask = mask.masked_fill(mask == MASK_PAD_CODE, self.ignore_index)
            batch["mask"] = mask
        return batch
