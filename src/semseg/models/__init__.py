"""Model factory: our FCN and every smp architecture by name, behind one wrapper for any input size."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from semseg.errors import ConfigError
from semseg.models.fcn import FCN, VARIANTS
from semseg.models.mask_classification import MASK_ARCHITECTURES, MaskClassifier
from semseg.models.vit import check_encoder_fits, dpt_side_multiple, fit_dpt_to_patch, plain_vit_patch
from semseg.models.weights import (
    check_hub_weights,
    encoder_normalization,
    load_local_encoder,
    looks_like_path,
    timm_weights_file,
)

__all__ = ["ARCHITECTURES", "SegmentationNet", "build_model", "encoder_normalization"]

# The registry: architecture name -> class. smp's, plus the FCN that smp lacks.
ARCHITECTURES: dict[str, type[nn.Module]] = {**smp.MODEL_ARCHITECTURES_MAPPING, "fcn": FCN}

# DeepLab's atrous rates as the papers give them: (6, 12, 18) at output stride 16, doubled at 8.
DEEPLAB_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
# SegFormer's all-MLP decoder width: 256 for MiT-B0/B1, 768 for B2-B5 (Xie et al. 2021, Sec. 4.1).
SEGFORMER_WIDE_ENCODERS = {"mit_b2", "mit_b3", "mit_b4", "mit_b5"}


class SegmentationNet(nn.Module):
    """Pads inputs to a multiple of the network's output stride and crops the logits back.

    smp architectures reject (or misalign) sides not divisible by the encoder's stride; padding
    here lets every model take any image size in training, evaluation and prediction.

    Args:
        architecture: the smp-style model (encoder, decoder, head).
        stride: the side multiple the architecture needs.
        channels_last: run the network in NHWC memory format (faster convolutions on tensor cores).
    """

    def __init__(self, architecture: nn.Module, stride: int, channels_last: bool = False):
        super().__init__()
        self.architecture = architecture
        self.stride = stride
        self.channels_last = channels_last
        if channels_last:
            self.architecture.to(memory_format=torch.channels_last)
        self.register_load_state_dict_pre_hook(_rename_old_keys)

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded at the bottom and right to a multiple of the stride, in the network's memory format."""
        height, width = x.shape[-2:]
        bottom, right = -height % self.stride, -width % self.stride
        # Exported graphs (ONNX, torch.export) always pad: a branch on the size would fix the
        # graph to the example input's case, and padding by 0 is a no-op.
        if torch.compiler.is_exporting() or bottom or right:
            # Replicate rather than zero-pad: the border context looks like the image, not a wall.
            x = F.pad(x, (0, right, 0, bottom), mode="replicate")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        logits = self.architecture(self.padded(x))
        return logits[..., :height, :width]

    @property
    def computes_own_loss(self) -> bool:
        """Whether the architecture trains on a loss of its own (mask classification's matched
        losses) rather than on the ``loss`` config's terms over its logits."""
        return hasattr(self.architecture, "training_loss")

    def training_loss(
        self, x: torch.Tensor, target: torch.Tensor, ignore_index: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The architecture's own training loss (``computes_own_loss``) on ``x`` and its (N, H, W)
        class targets, both padded to the stride (the target with ``ignore_index``)."""
        height, width = x.shape[-2:]
        bottom, right = -height % self.stride, -width % self.stride
        target = F.pad(target, (0, right, 0, bottom), value=ignore_index)
        return self.architecture.training_loss(self.padded(x), target, ignore_index)


def _rename_old_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before the architecture attribute got its name hold its tensors as
    ``<prefix>net.*``: read them as ``<prefix>architecture.*``, so those checkpoints still load."""
    old = f"{prefix}net."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[f"{prefix}architecture.{key.removeprefix(old)}"] = state_dict.pop(key)


def _architecture(name: str) -> type[nn.Module]:
    try:
        return ARCHITECTURES[name.lower()]
    except KeyError:
        valid = sorted([*ARCHITECTURES, *MASK_ARCHITECTURES])
        raise ConfigError(f"model.arch={name} is not an architecture. Valid: {', '.join(valid)}.") from None


def architecture_kwargs(cfg: Mapping) -> dict[str, Any]:
    """Constructor arguments from the architecture's own config keys, then ``model.kwargs``."""
    arch = cfg["arch"].lower()
    kwargs: dict[str, Any] = {}
    match arch:
        case "fcn":
            variant = str(cfg.get("variant", "8s"))
            if variant not in VARIANTS:
                raise ConfigError(f"model.variant={variant}: FCN variants are {', '.join(VARIANTS)}.")
            kwargs["variant"] = variant
        case "deeplabv3" | "deeplabv3plus":
            output_stride = int(cfg.get("output_stride", 16))
            if output_stride not in DEEPLAB_RATES:
                raise ConfigError(f"model.output_stride={output_stride}: DeepLab supports 8 or 16.")
            kwargs["encoder_output_stride"] = output_stride
            kwargs["decoder_atrous_rates"] = tuple(cfg.get("atrous_rates") or DEEPLAB_RATES[output_stride])
        case "segformer":
            wide = cfg["encoder_name"] in SEGFORMER_WIDE_ENCODERS
            kwargs["decoder_segmentation_channels"] = cfg.get("decoder_channels") or (768 if wide else 256)
        case "upernet":
            kwargs["decoder_channels"] = int(cfg.get("decoder_channels") or 256)
        case "dpt":
            # timm's ViTs otherwise take only their pretraining size (224, or DINOv2's 518); with
            # it they interpolate the position embeddings to any grid of patches.
            kwargs["dynamic_img_size"] = True
    return kwargs | dict(cfg.get("kwargs") or {})


def build_model(cfg: Mapping, in_channels: int, num_classes: int) -> SegmentationNet:
    """Builds the network named by the ``model`` config group.

    Args:
        cfg: ``arch`` (``fcn`` or any smp architecture name; ``mask2former`` and ``eomt`` take
            the keys of ``semseg.models.mask_classification.MaskClassifier``), ``encoder_name``,
            ``encoder_weights`` (``imagenet`` or another smp weight name, null, or a local file),
            the architecture's own keys (``variant``; ``output_stride``, ``atrous_rates``;
            ``decoder_channels``), ``channels_last`` and ``kwargs`` passed to the architecture.
            ``init_from`` and ``from_pretrained`` are training's (``semseg.models.pretrained``): the
            network is built here as the config describes, with its encoder's initial weights.
        in_channels: image channels.
        num_classes: output classes.
    """
    arch = cfg["arch"].lower()
    if arch in MASK_ARCHITECTURES:  # transformers' models: no smp encoder (model.hf_config, model.pretrained)
        net = MaskClassifier(cfg, in_channels, num_classes)
        return SegmentationNet(net, stride=net.stride, channels_last=bool(cfg.get("channels_last", False)))
    architecture = _architecture(cfg["arch"])
    check_encoder_fits(arch, cfg["encoder_name"])
    kwargs = architecture_kwargs(cfg)
    weights = cfg.get("encoder_weights")
    local_file = Path(weights) if weights and looks_like_path(str(weights)) else None
    if local_file and plain_vit_patch(cfg["encoder_name"]):
        # timm reads ViT weight files itself (its own and Meta's DINOv2 format), resampling the
        # position embeddings and adapting the patch embedding to in_channels.
        kwargs |= timm_weights_file(local_file)
        local_file = None
    elif weights and local_file is None:
        check_hub_weights(cfg["encoder_name"], weights)
    try:
        net = architecture(
            encoder_name=cfg["encoder_name"],
            encoder_weights=None if local_file else weights,
            in_channels=3 if local_file else in_channels,
            classes=num_classes,
            **kwargs,
        )
    except KeyError as error:  # smp lists the valid encoder / weight names
        raise ConfigError(f"model config {dict(cfg)}: {error.args[0]}") from error
    except (TypeError, ValueError) as error:  # unexpected kwargs, depths or strides the encoder lacks
        raise ConfigError(f"model.arch={cfg['arch']} with {kwargs}: {error}") from error
    except OSError as error:  # hub download failures (connection, missing cache)
        raise ConfigError(
            f"model.encoder_weights={weights}: could not fetch the pretrained weights ({error}). "
            "Use model.encoder_weights=null to train from scratch, or a local weights file."
        ) from error
    except RuntimeError as error:  # timm's load of a ViT weights file that does not fit the model
        if "pretrained_cfg_overlay" not in kwargs:
            raise
        gist = "; ".join(line.strip() for line in str(error).splitlines()[:2])
        raise ConfigError(
            f"model.encoder_weights={weights} does not fit encoder {cfg['encoder_name']}: {gist}"
        ) from error
    if local_file:
        load_local_encoder(net, local_file, in_channels)
    if arch == "dpt":
        fit_dpt_to_patch(net)
        stride = dpt_side_multiple(net)
    else:
        stride = int(getattr(net.encoder, "output_stride", 32))
    return SegmentationNet(net, stride=stride, channels_last=bool(cfg.get("channels_last", False)))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_gflops(net: nn.Module, in_channels: int, height: int, width: int) -> float:
    """GFLOPs of one forward pass of one ``height`` x ``width`` image, counted by
    ``torch.utils.flop_counter`` (two FLOPs per multiply-add; papers often count multiply-adds).

    Runs in eval mode without gradients, so BatchNorm statistics stay untouched.
    """
    was_training = net.training
    device = next(net.parameters()).device
    net.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            net(torch.zeros(1, in_channels, height, width, device=device))
    finally:
        net.train(was_training)
    return counter.get_total_flops() / 1e9
