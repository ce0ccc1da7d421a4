"""FCN (Long, Shelhamer and Darrell, CVPR 2015) as an smp-style model on any smp encoder.

smp has no FCN, so it is written here with smp's pieces and constructor arguments: an smp encoder,
an FCN decoder that fuses class scores, and an upsampling head.

The paper's recipe, kept: the classifier is convolutionalised (``fc6``/``fc7`` become convolutions
on the stride-32 features, here a narrower 3x3 + 1x1 pair with dropout) and scored by a 1x1
convolution; FCN-16s and FCN-8s add 1x1 score layers on the stride-16 and stride-8 features,
initialised to zero so training starts from the coarser net, and fuse them by summation after a
learnable 2x upsampling initialised to bilinear interpolation; the last upsampling (x32, x16 or
x8) is fixed bilinear interpolation. The paper's 100-pixel input padding and crop offsets are not
needed: inputs are padded to a multiple of 32 (see ``SegmentationNet``), so the maps align.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationModel
from segmentation_models_pytorch.base import modules as md
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

# Variant name -> encoder strides whose features are scored and fused, coarsest first.
VARIANTS: dict[str, tuple[int, ...]] = {"32s": (32,), "16s": (32, 16), "8s": (32, 16, 8)}
ENCODER_DEPTH = 5  # stride 32 = 2**5: FCN scores the fifth (last) encoder stage


def bilinear_upsampling_kernel(channels: int, factor: int) -> torch.Tensor:
    """ConvTranspose2d weights that perform bilinear upsampling by ``factor``, channel by channel."""
    size = 2 * factor - factor % 2
    center = (size - 1) / 2 if size % 2 else factor - 0.5
    ramp = 1 - torch.abs(torch.arange(size, dtype=torch.float32) - center) / factor
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = ramp[:, None] * ramp[None, :]
    return weight


class FCNDecoder(nn.Module):
    """Class scores at the finest stride of the variant, fused coarse-to-fine by summation.

    Args:
        encoder_channels: channels of the encoder's features, one per stride 1, 2, 4, ..., 32.
        classes: number of classes scored.
        variant: ``32s``, ``16s`` or ``8s``.
        channels: width of the convolutionalised classifier (the paper's fc6/fc7).
        dropout: dropout after fc6 and fc7.
    """

    def __init__(self, encoder_channels: list[int], classes: int, variant: str, channels: int, dropout: float):
        super().__init__()
        self.strides = VARIANTS[variant]
        deepest = encoder_channels[-1]
        self.classifier = nn.Sequential(
            md.Conv2dReLU(deepest, channels, kernel_size=3, padding=1),  # fc6
            nn.Dropout2d(dropout),
            md.Conv2dReLU(channels, channels, kernel_size=1),  # fc7
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, classes, kernel_size=1),  # score_fr
        )
        # score_pool4 / score_pool3: 1x1 scores of the skip features (index log2(stride)).
        self.skip_scores = nn.ModuleList(
            nn.Conv2d(encoder_channels[stride.bit_length() - 1], classes, kernel_size=1) for stride in self.strides[1:]
        )
        # upscore2 / upscore_pool4: learnable 2x upsampling, initialised bilinear in reset_fusion().
        self.upsample2x = nn.ModuleList(
            nn.ConvTranspose2d(classes, classes, kernel_size=4, stride=2, padding=1, bias=False)
            for _ in self.strides[1:]
        )

    def reset_fusion(self) -> None:
        """The paper's initialisation of the fusion layers (call after smp's generic init)."""
        for score in self.skip_scores:
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        for up in self.upsample2x:
            up.weight.data.copy_(bilinear_upsampling_kernel(up.in_channels, 2))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        scores = self.classifier(features[-1])
        for stride, score_skip, upsample in zip(self.strides[1:], self.skip_scores, self.upsample2x, strict=True):
            skip = score_skip(features[stride.bit_length() - 1])
            # Exactly 2x: inputs are multiples of 32 (smp's check_input_shape; SegmentationNet pads).
            scores = upsample(scores) + skip
        return scores


class FCNHead(nn.Module):
    """Fixed bilinear upsampling of the fused scores back to the input resolution."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return F.interpolate(scores, scale_factor=self.factor, mode="bilinear", align_corners=False)


class FCN(SegmentationModel):
    """Fully convolutional network: FCN-32s, FCN-16s or FCN-8s on any smp encoder.

    Args:
        encoder_name: smp encoder (``vgg16`` is the paper's; any encoder with 5 stages works).
        encoder_weights: ``imagenet``, another smp weight name, or None.
        variant: ``32s`` (scores of the stride-32 features only), ``16s`` (+ stride 16) or
            ``8s`` (+ stride 8): finer skips give sharper boundaries.
        decoder_channels: width of the convolutionalised classifier (fc6/fc7; 4096 in the paper).
        decoder_dropout: dropout after fc6 and fc7 (0.5 in the paper, for 4096 channels).
        in_channels: image channels.
        classes: number of classes.
        kwargs: passed to the encoder (timm ``tu-`` encoders).
    """

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_weights: str | None = "imagenet",
        variant: str = "8s",
        decoder_channels: int = 512,
        decoder_dropout: float = 0.1,
        in_channels: int = 3,
        classes: int = 1,
        **kwargs: Any,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"FCN variant '{variant}' is not one of {list(VARIANTS)}")
        if kwargs.get("encoder_depth", ENCODER_DEPTH) != ENCODER_DEPTH:
            # smp's get_encoder would take the keyword and silently build 5 stages anyway.
            raise ValueError(
                f"encoder_depth={kwargs['encoder_depth']}: FCN scores the stride-32 features of a "
                f"{ENCODER_DEPTH}-stage encoder (and fuses stride 16 and 8 for 16s/8s); leave encoder_depth out"
            )
        self.encoder = get_encoder(
            encoder_name,
            in_channels=in_channels,
            depth=ENCODER_DEPTH,
            weights=encoder_weights,
            **{k: v for k, v in kwargs.items() if k != "encoder_depth"},
        )
        stages = len(self.encoder.out_channels) - 1  # out_channels lists the input, then each stage
        if stages < ENCODER_DEPTH:
            raise ValueError(
                f"encoder {encoder_name} has {stages} stages; FCN-{variant} needs {ENCODER_DEPTH} "
                "(features down to stride 32). Choose a deeper encoder (resnet*, vgg*, efficientnet-*, ...)"
            )
        self.decoder = FCNDecoder(self.encoder.out_channels, classes, variant, decoder_channels, decoder_dropout)
        self.segmentation_head = FCNHead(factor=VARIANTS[variant][-1])
        self.classification_head = None
        self.name = f"fcn{variant}-{encoder_name}"
        self.initialize()
        self.decoder.reset_fusion()
