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

from semseg.data.mask_codes import MASK_PAD_CODE
from semseg.errors import DataError


def pad_collate(batch: list[dict]) -> dict:
    """Stacks samples, padding images (0) and masks (``MASK_PAD_CODE``) to the largest in the batch.

    Needed when ``data.image_size`` is null and images differ in size; a batch of equal sizes is
    stacked as is.
    """
    depths = {item["image"].dtype: item["name"] for item in batch}
    if len(depths) > 1:  # torch cannot stack them; the data check names such files before training
        named = ", ".join(f"{name} ({dtype})".replace("torch.", "") for dtype, name in depths.items())
        raise DataError(f"a batch holds images of more than one depth: {named}; convert them to one depth.")
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
    """Turns a loader's batch into the network's input and the loss's target, on the batch's
    device: ``image`` (N, C, H, W) uint8 or uint16 -> float32 ``(x / max_pixel_value - mean) /
    std``, exactly as albumentations' ``Normalize`` computes it; ``mask`` (N, H, W) uint8 codes (or
    a multi-label task's (N, K, H, W) 0/1 planes) -> int64, ``MASK_PAD_CODE`` -> ``ignore_index``.
    Images that are already floating point are taken as normalised and left alone, so preparing
    twice changes nothing; images of another depth than the network's are refused (8-bit pixels
    divided by 65535 would pass for black).

    A module so that its constants follow the network to its device (buffers, not saved in
    checkpoints: they are derived from the hyper-parameters).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], ignore_index: int, max_pixel_value: float = 255.0):
        super().__init__()
        shape = (1, len(mean), 1, 1)
        scale = torch.tensor(std, dtype=torch.float32).view(shape) * max_pixel_value
        offset = torch.tensor(mean, dtype=torch.float32).view(shape) * max_pixel_value
        self.register_buffer("offset", offset, persistent=False)
        self.register_buffer("inverse_scale", scale.reciprocal(), persistent=False)
        self.ignore_index = int(ignore_index)
        self.image_dtype = torch.uint16 if max_pixel_value > 255 else torch.uint8

    def forward(self, batch: dict) -> dict:
        batch = dict(batch)
        image = batch["image"]
        if not image.is_floating_point():
            self._check_depth(image, batch.get("name"))
            # .to: a no-op where the batch is on the module's device (training); a CPU copy otherwise.
            batch["image"] = (image.float() - self.offset.to(image.device)) * self.inverse_scale.to(image.device)
        mask = batch.get("mask")
        if mask is not None and mask.dtype == torch.uint8:
            mask = mask.long()
            if self.ignore_index != MASK_PAD_CODE:
                mask = mask.masked_fill(mask == MASK_PAD_CODE, self.ignore_index)
            batch["mask"] = mask
        return batch

    def _check_depth(self, image: torch.Tensor, names: Sequence[str] | None) -> None:
        if image.dtype == self.image_dtype:
            return
        bits = {torch.uint8: "8", torch.uint16: "16"}
        which = f" ({', '.join(names[:3])})" if names else ""
        raise DataError(
            f"images{which} are {bits.get(image.dtype, str(image.dtype))}-bit, but this model was trained on "
            f"{bits[self.image_dtype]}-bit images: give it images stored as it was trained on."
        )
