"""Plain vision transformers (timm's ViT, DINOv2, DeiT, EVA) as encoders: which architectures take
them, the side multiple their inputs need, and DPT on patch sizes that are not a power of two."""

from __future__ import annotations

import functools
import math

import torch
from segmentation_models_pytorch.base.initialization import initialize_decoder
from segmentation_models_pytorch.decoders.dpt.decoder import ReassembleBlock
from torch import nn

from semseg.errors import ConfigError

# smp's architecture that takes a plain ViT (features at one stride); the others need a pyramid.
VIT_ARCHITECTURES = ("dpt",)
EXAMPLE_VIT = "tu-vit_small_patch14_dinov2"


@functools.cache
def plain_vit_patch(encoder_name: str) -> int | None:
    """The patch size of a timm encoder (``tu-<name>``) whose features all have one stride (a plain
    ViT); None for any other encoder, or a name timm does not know (smp names those itself).

    Built on the meta device: the structure without memory, weights or downloads (milliseconds)."""
    if not encoder_name.startswith("tu-"):
        return None
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(encoder_name[3:], pretrained=False)
    except Exception:  # unknown names, models that cannot be built on meta: not ours to judge here
        return None
    strides = {info["reduction"] for info in getattr(model, "feature_info", None) or []}
    return strides.pop() if len(strides) == 1 else None


def check_encoder_fits(arch: str, encoder_name: str) -> None:
    """Plain ViTs only in DPT, and DPT only on a plain ViT: smp fails either way with a message
    about downsampling patterns or timm names, or (DPT on a CNN) builds a model that fails later."""
    vit = plain_vit_patch(encoder_name) is not None
    if arch in VIT_ARCHITECTURES and not vit:
        raise ConfigError(
            f"model.arch={arch} needs a plain vision transformer from timm, e.g. "
            f"model.encoder_name={EXAMPLE_VIT} (or tu-vit_base_patch16_224); {encoder_name} is not one."
        )
    if vit and arch not in VIT_ARCHITECTURES:
        raise ConfigError(
            f"model.encoder_name={encoder_name} is a plain vision transformer (features at one stride), which "
            f"model.arch={arch} cannot take: use model=dpt, or an encoder with features at several strides "
            "(a CNN, mit_b0 ... mit_b5, tu-convnext_tiny, tu-swin_tiny_patch4_window7_224)."
        )


def fit_dpt_to_patch(net: nn.Module) -> None:
    """Makes smp's DPT work on a ViT whose patch size is not a power of two (DINOv2's 14).

    smp 0.6 turns each feature's scale (patch / 4, / 8, / 16, / 32) into an integer up- or
    down-sampling factor, 3.5 becoming 3 and so on, so a 14-pixel patch gives feature maps that
    do not add up in the fusion stages (a size mismatch at any input size). Reassembling the
    token grid as the nearest power-of-two patch would (x4, x2, x1, /2), and scaling the head's
    final upsampling by patch / that size, gives the decoder's pyramid and exactly the input size.
    """
    patch = int(net.encoder.output_stride)
    nominal = 2 ** round(math.log2(patch))
    if patch == nominal:
        return
    blocks = net.decoder.reassemble_blocks
    for index, block in enumerate(blocks):
        # The factors smp derives from the stride (DPTDecoder): nominal / 4, / 8, / 16, / 32.
        blocks[index] = ReassembleBlock(
            in_channels=block.project_to_out_channel.in_channels,
            mid_channels=block.project_to_out_channel.out_channels,
            out_channels=block.project_to_feature_dim.out_channels,
            upsample_factor=nominal / 2 ** (index + 2),
        )
        initialize_decoder(blocks[index])
    net.segmentation_head.upsampling_factor *= patch / nominal


def dpt_side_multiple(net: nn.Module) -> int:
    """The side multiple DPT's inputs need: the patch size, times the stride of the reassembly that
    halves the token grid (its fusion adds it, upsampled, to the full grid, so the grid must be
    even: 2 x 14 = 28 for DINOv2, 32 for a 16-pixel patch)."""
    halving = [
        block.upsample.stride[0] for block in net.decoder.reassemble_blocks if isinstance(block.upsample, nn.Conv2d)
    ]
    return int(net.encoder.output_stride) * max(halving, default=1)
