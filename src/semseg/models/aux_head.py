"""An auxiliary head on an intermediate encoder stage, trained beside the decoder and dropped at
inference (PSPNet's deep supervision; MMSegmentation puts one on every CNN model's stride-16 stage
with weight 0.4).

smp has an auxiliary *classification* head only (``aux_params``: image-level labels), and no
model exposes its encoder's features to a second head: the features are read by a forward hook
on the encoder while the training step runs the network once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError


@dataclass(frozen=True)
class AuxHeadSettings:
    """``model.aux_head``: ``weight`` of its loss (0: no head), the encoder ``stage`` it reads (an
    index into the encoder's feature list, -2: the stage before the last, stride 16 of 32) and
    its hidden ``channels``."""

    weight: float = 0.0
    stage: int = -2
    channels: int = 256

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> AuxHeadSettings:
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"weight", "stage", "channels"}
        if unknown:
            raise ConfigError(f"model.aux_head has unknown keys {sorted(unknown)}; its keys: weight, stage, channels.")
        settings = cls(**cfg)
        if settings.weight < 0 or settings.channels < 1:
            raise ConfigError(
                f"model.aux_head={cfg}: weight must be >= 0 (0 turns the head off; 0.4 is MMSegmentation's) "
                "and channels >= 1."
            )
        return settings

    @property
    def enabled(self) -> bool:
        return self.weight > 0


class AuxiliaryHead(nn.Module):
    """MMSegmentation's auxiliary FCNHead: 3x3 conv, BatchNorm, ReLU, dropout 0.1, 1x1 conv to the
    classes; its logits are upsampled bilinearly to the image."""

    def __init__(self, in_channels: int, channels: int, num_classes: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.layers(features), size=size, mode="bilinear", align_corners=False)


def encoder_stage_channels(encoder: nn.Module | None, settings: AuxHeadSettings, arch: str) -> int:
    """The channels of the encoder stage the head reads, checked: a clear error when the network
    has no encoder of features or the stage does not exist."""
    channels = getattr(encoder, "out_channels", None)
    if encoder is None or not channels:
        raise ConfigError(
            f"model.aux_head needs an encoder with a feature pyramid; model.arch={arch} has none. "
            "Set model.aux_head.weight=0."
        )
    try:
        return int(list(channels)[settings.stage])
    except IndexError:
        raise ConfigError(
            f"model.aux_head.stage={settings.stage}: the encoder has {len(channels)} feature maps "
            f"(channels {list(channels)}); give an index among them (-2: the stage before the last)."
        ) from None


@contextmanager
def captured_features(encoder: nn.Module) -> Iterator[list]:
    """Collects the encoder's output (its list of feature maps) while the block runs."""
    outputs: list = []
    handle = encoder.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()
