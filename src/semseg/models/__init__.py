"""Model factory: smp architectures by name, behind one wrapper that accepts any input size."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from torch import nn

from semseg.errors import ConfigError
from semseg.network import can_reach

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_HOST = "huggingface.co"


class SegmentationNet(nn.Module):
    """Pads inputs to a multiple of the network's output stride and crops the logits back.

    smp architectures reject (or misalign) sides not divisible by the encoder's stride; padding
    here lets every model take any image size in training, evaluation and prediction.
    """

    def __init__(self, net: nn.Module, stride: int):
        super().__init__()
        self.net = net
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        bottom, right = -height % self.stride, -width % self.stride
        if bottom or right:
            # Replicate rather than zero-pad: the border context looks like the image, not a wall.
            x = F.pad(x, (0, right, 0, bottom), mode="replicate")
        logits = self.net(x)
        return logits[..., :height, :width]


def _looks_like_path(weights: str) -> bool:
    return os.sep in weights or Path(weights).suffix in {".pth", ".pt", ".bin", ".safetensors", ".ckpt"}


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only: a weights file must never run code when loaded.
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _encoder_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accepts an encoder state dict, or a whole model's (keys containing ``encoder.``)."""
    if any("encoder." in key for key in state):
        return {key.split("encoder.", 1)[1]: value for key, value in state.items() if "encoder." in key}
    return dict(state)


def _load_local_encoder(model: nn.Module, path: Path, in_channels: int) -> None:
    if not path.is_file():
        raise ConfigError(
            f"model.encoder_weights={path}: no such file. Give an existing weights file, 'imagenet', "
            "or null to train from scratch."
        )
    try:
        model.encoder.load_state_dict(_encoder_state(_load_state_dict(path)))
    except (RuntimeError, KeyError) as error:
        raise ConfigError(
            f"model.encoder_weights={path} does not fit encoder {type(model.encoder).__name__}: {error}"
        ) from error
    if in_channels != 3:
        # Same adaptation smp applies to its own pretrained weights (sum or cycle the RGB filters).
        model.encoder.set_in_channels(in_channels, pretrained=True)


def _check_hub_weights(encoder_name: str, weights: str) -> None:
    """Fails fast with a clear message when hub weights are neither cached nor reachable."""
    settings = smp.encoders.encoders.get(encoder_name, {}).get("pretrained_settings", {}).get(weights)
    if settings is None:
        return  # smp itself names the valid weights (or it is a timm 'tu-' encoder)
    cached = try_to_load_from_cache(settings["repo_id"], "model.safetensors", revision=settings["revision"])
    if isinstance(cached, str):
        if not can_reach(HUB_HOST):
            hf_constants.HF_HUB_OFFLINE = True  # use the cache without minutes of retries
        return
    if not can_reach(HUB_HOST):
        raise ConfigError(
            f"model.encoder_weights={weights}: the {encoder_name} weights are not in the local cache "
            f"and {HUB_HOST} cannot be reached. Train from scratch with model.encoder_weights=null, "
            "or point model.encoder_weights at a local weights file (.pth or .safetensors)."
        )


def build_model(cfg: Mapping, in_channels: int, num_classes: int) -> SegmentationNet:
    """Builds the network named by the ``model`` config group.

    Args:
        cfg: ``arch`` (any smp architecture name), ``encoder_name``, ``encoder_weights``
            (``imagenet`` or another smp weight name, null, or a local file) and optional
            ``kwargs`` passed to the architecture.
        in_channels: image channels.
        num_classes: output classes.
    """
    weights = cfg.get("encoder_weights")
    local_file = Path(weights) if weights and _looks_like_path(str(weights)) else None
    if weights and local_file is None:
        _check_hub_weights(cfg["encoder_name"], weights)
    try:
        net = smp.create_model(
            cfg["arch"],
            encoder_name=cfg["encoder_name"],
            encoder_weights=None if local_file else weights,
            in_channels=3 if local_file else in_channels,
            classes=num_classes,
            **dict(cfg.get("kwargs") or {}),
        )
    except KeyError as error:  # smp lists the valid architecture / encoder / weight names
        raise ConfigError(f"model config {dict(cfg)}: {error.args[0]}") from error
    except OSError as error:  # hub download failures (connection, missing cache)
        raise ConfigError(
            f"model.encoder_weights={weights}: could not fetch the pretrained weights ({error}). "
            "Use model.encoder_weights=null to train from scratch, or a local weights file."
        ) from error
    if local_file:
        _load_local_encoder(net, local_file, in_channels)
    return SegmentationNet(net, stride=int(getattr(net.encoder, "output_stride", 32)))


def _fit_channels(values: Sequence[float], in_channels: int) -> list[float]:
    """RGB statistics for a C-channel input, matching how smp adapts pretrained first convs."""
    if in_channels == 1:
        return [sum(values) / len(values)]  # smp sums the RGB filters: one grey channel
    return [values[i % len(values)] for i in range(in_channels)]  # smp cycles R, G, B, R, ...


def _pretrained_statistics(encoder_name: str, weights: str) -> tuple[Sequence[float], Sequence[float]] | None:
    if encoder_name.startswith("tu-"):  # timm ships its statistics in code
        import timm

        config = timm.models.get_pretrained_cfg(encoder_name[3:])
        return (config.mean, config.std) if config else None
    settings = smp.encoders.encoders.get(encoder_name, {}).get("pretrained_settings", {}).get(weights)
    if settings is None:
        return None
    # smp keeps them in the hub config downloaded with the weights (build_model fetched it).
    path = try_to_load_from_cache(settings["repo_id"], "config.json", revision=settings["revision"])
    if not isinstance(path, str):
        return None
    config = json.loads(Path(path).read_text())
    return config["mean"], config["std"]


def encoder_normalization(cfg: Mapping, in_channels: int) -> tuple[list[float], list[float]]:
    """Mean and std (0..1 units) the encoder expects.

    The pretrained weights' own statistics when known (call after ``build_model``, which caches
    them), else ImageNet's: the convention for local weight files and for training from scratch.
    """
    weights = cfg.get("encoder_weights")
    stats = None
    if weights and not _looks_like_path(str(weights)):
        stats = _pretrained_statistics(cfg["encoder_name"], str(weights))
    mean, std = stats or (IMAGENET_MEAN, IMAGENET_STD)
    return _fit_channels(mean, in_channels), _fit_channels(std, in_channels)
