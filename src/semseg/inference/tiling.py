"""Inference on images of any size: whole-image, tiled (sliding window) and test-time augmentation.

Written here because none of the stack provides it: smp and Lightning have no sliding-window
inference, and ttach (smp's companion) averages raw logits, is unmaintained, and does not
compose with tiling. Here TTA runs per tile, so tiling bounds the network's input size whatever
the augmentations, and probabilities (not logits) are averaged, so one confident view cannot
outvote the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError

FLIPS = {"horizontal": (-1,), "vertical": (-2,)}
# Probabilities are returned as log-probabilities: softmax(log p) = p, so losses and argmax treat
# them as logits. The floor keeps log finite where a class got probability 0.
_LOG_FLOOR = 1e-8


@dataclass(frozen=True)
class InferenceSettings:
    """How a network sees an image at evaluation (the ``inference`` config group).

    Args:
        tile_size: ``[H, W]`` of the sliding window; images larger than it on a side are tiled on
            that side. None: the whole image at once.
        tile_overlap: fraction of a tile shared with its neighbour (0 <= overlap < 1); the overlap
            is blended with weights that fall linearly towards each tile's edge, so no seams show.
        tile_batch_size: tiles per forward pass.
        flips: test-time flips, any of ``horizontal`` and ``vertical``; each is a view added to
            the unflipped one.
        scales: test-time scales (1.0 is the image as is); every scale is seen with every flip.
    """

    tile_size: tuple[int, int] | None = None
    tile_overlap: float = 0.25
    tile_batch_size: int = 4
    flips: tuple[str, ...] = ()
    scales: tuple[float, ...] = (1.0,)

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> InferenceSettings:
        """Settings from the ``inference`` group, each key checked (the key and the fix named).

        A missing key takes the field's default above, the one copy in code (conf/inference/whole.yaml
        lists the same values for users; a test holds the two equal).
        """
        defaults = {field.name: field.default for field in fields(cls)}
        given = dict(cfg or {})
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ConfigError(f"inference.{unknown[0]} is not a setting; valid: {', '.join(defaults)}.")
        cfg = defaults | given
        tile = cfg["tile_size"]
        if tile is not None:
            tile = (int(tile), int(tile)) if isinstance(tile, int) else tuple(int(v) for v in tile)
            if len(tile) != 2 or min(tile) < 1:
                raise ConfigError(f"inference.tile_size={cfg['tile_size']}: give [H, W] (or one side), or null.")
        overlap = float(cfg["tile_overlap"])
        if not 0 <= overlap < 1:
            raise ConfigError(f"inference.tile_overlap={overlap}: a fraction of the tile, 0 <= overlap < 1.")
        # null or an empty list means the default too: no flips, and the image at its own scale.
        flips = tuple(cfg["flips"] or defaults["flips"])
        bad = [f for f in flips if f not in FLIPS]
        if bad:
            raise ConfigError(f"inference.flips: {bad[0]} is not a flip; valid: {', '.join(FLIPS)}.")
        scales = tuple(float(s) for s in (cfg["scales"] or defaults["scales"]))
        if min(scales) <= 0:
            raise ConfigError(f"inference.scales={list(scales)}: scales must be positive.")
        batch = int(cfg["tile_batch_size"])
        if batch < 1:
            raise ConfigError(f"inference.tile_batch_size={batch}: at least 1.")
        return cls(tile, overlap, batch, flips, scales)

    @property
    def uses_tta(self) -> bool:
        return bool(self.flips) or self.scales != (1.0,)

    def needs_tiles(self, height: int, width: int) -> bool:
        return self.tile_size is not None and (height > self.tile_size[0] or width > self.tile_size[1])


def _view_logits(net: nn.Module, images: torch.Tensor, scale: float, flip: tuple[int, ...]) -> torch.Tensor:
    """Logits of one augmented view, mapped back onto ``images``' pixel grid."""
    height, width = images.shape[-2:]
    view = images
    if scale != 1.0:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        view = F.interpolate(view, size=size, mode="bilinear", align_corners=False)
    if flip:
        view = view.flip(flip)
    logits = net(view)
    if flip:
        logits = logits.flip(flip)
    if scale != 1.0:
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits


def _tta_probabilities(
    net: nn.Module, images: torch.Tensor, settings: InferenceSettings, sigmoid: bool = False
) -> torch.Tensor:
    """Mean softmax (or, with ``sigmoid``, per-channel sigmoid) probability over every (scale, flip) view."""
    flips = [(), *(FLIPS[name] for name in settings.flips)]
    total = None
    for scale in settings.scales:
        for flip in flips:
            logits = _view_logits(net, images, scale, flip).float()
            probabilities = logits.sigmoid() if sigmoid else logits.softmax(dim=1)
            total = probabilities if total is None else total + probabilities
    return total / (len(settings.scales) * len(flips))


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Window starts covering ``[0, length)`` with windows of ``tile``: evenly stepped by
    ``tile * (1 - overlap)``, the last flush with the end (so it may overlap more)."""
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def blend_weights(height: int, width: int, ramp: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(H, W) weights rising linearly over ``ramp`` pixels from each edge to 1 inside.

    Every weight is positive, so pixels seen by a single tile (the image border) keep its
    prediction; where tiles overlap, each counts less near its own edge, where it saw less context.
    """

    def ramp_1d(n: int, r: int) -> torch.Tensor:
        position = torch.arange(n, device=device, dtype=torch.float32)
        distance = torch.minimum(position + 1, n - position)
        return (distance / max(r, 1)).clamp(max=1.0)

    return ramp_1d(height, ramp[0])[:, None] * ramp_1d(width, ramp[1])[None, :]


def _tiled_probabilities(
    net: nn.Module, images: torch.Tensor, settings: InferenceSettings, sigmoid: bool = False
) -> torch.Tensor:
    """Blended per-tile probabilities; only tiles (and their batch) go to the network's device, the
    accumulators stay on ``images``' device, so an image far larger than device memory fits."""
    assert settings.tile_size is not None
    batch, _, height, width = images.shape
    tile_h, tile_w = min(settings.tile_size[0], height), min(settings.tile_size[1], width)
    ramp = (round(tile_h * settings.tile_overlap), round(tile_w * settings.tile_overlap))
    weights = blend_weights(tile_h, tile_w, ramp, images.device)
    device = next(net.parameters()).device
    windows = [
        (top, left)
        for top in tile_starts(height, tile_h, settings.tile_overlap)
        for left in tile_starts(width, tile_w, settings.tile_overlap)
    ]
    total = None
    norm = torch.zeros(height, width, device=images.device)
    per_pass = max(1, settings.tile_batch_size // batch)
    for first in range(0, len(windows), per_pass):
        chunk = windows[first : first + per_pass]
        tiles = torch.cat([images[..., top : top + tile_h, left : left + tile_w] for top, left in chunk]).to(device)
        probabilities = _tta_probabilities(net, tiles, settings, sigmoid).to(images.device)
        if total is None:
            total = images.new_zeros(batch, probabilities.shape[1], height, width, dtype=torch.float32)
        for index, (top, left) in enumerate(chunk):
            tile_probabilities = probabilities[index * batch : (index + 1) * batch]
            total[..., top : top + tile_h, left : left + tile_w] += tile_probabilities * weights
            norm[top : top + tile_h, left : left + tile_w] += weights
    return total / norm


@torch.no_grad()
def predict_logits(
    net: nn.Module, images: torch.Tensor, settings: InferenceSettings, sigmoid: bool = False
) -> torch.Tensor:
    """Class scores of (N, C, H, W) normalised images: (N, K, H, W), argmax = the prediction.

    The whole image without TTA returns the network's logits unchanged (the training-time
    forward); tiling or TTA return log mean probabilities, which losses and argmax read as logits.
    With ``sigmoid`` (binary and multi-label tasks: one sigmoid per channel) they average sigmoid
    probabilities and return their logits, which sigmoid losses and thresholds read alike.
    """
    if settings.needs_tiles(*images.shape[-2:]):
        probabilities = _tiled_probabilities(net, images, settings, sigmoid)
    else:
        images = images.to(next(net.parameters()).device)
        if not settings.uses_tta:
            return net(images)
        probabilities = _tta_probabilities(net, images, settings, sigmoid)
    if sigmoid:
        return torch.logit(probabilities.clamp(_LOG_FLOOR, 1 - _LOG_FLOOR))
    return probabilities.clamp(min=_LOG_FLOOR).log()


def logits_to_prediction(logits: torch.Tensor, mode: str = "multiclass", threshold: float = 0.5) -> torch.Tensor:
    """The prediction of (N, K, H, W) logits as ``data.mode`` reads them: multiclass, the (N, H, W)
    argmax; binary, (N, H, W) 0/1 where sigmoid > ``threshold``; multilabel, (N, K, H, W) 0/1 planes."""
    if mode == "multiclass":
        return logits.argmax(dim=1)
    # sigmoid(x) > t  <=>  x > logit(t): no sigmoid over every pixel.
    present = (logits > math.log(threshold / (1 - threshold))).long()
    return present[:, 0] if mode == "binary" else present
