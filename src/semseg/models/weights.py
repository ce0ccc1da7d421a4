"""Encoder weights: smp hub names (online or cached), local files, and the normalisation they imply."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from torch import nn

from semseg.errors import ConfigError
from semseg.online import can_reach

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_HOST = "huggingface.co"


def looks_like_path(weights: str) -> bool:
    """Whether ``model.encoder_weights`` names a local file rather than an smp weight name."""
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


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(
            f"model.encoder_weights={path}: no such file. Give an existing weights file, 'imagenet', "
            "or null to train from scratch."
        )


def load_local_encoder(model: nn.Module, path: Path, in_channels: int) -> None:
    """Loads a local weights file into ``model.encoder`` (built for 3 channels), then adapts it."""
    _require_file(path)
    try:
        model.encoder.load_state_dict(_encoder_state(_load_state_dict(path)))
    except (RuntimeError, KeyError) as error:
        raise ConfigError(
            f"model.encoder_weights={path} does not fit encoder {type(model.encoder).__name__}: {error}"
        ) from error
    if in_channels != 3:
        # Same adaptation smp applies to its own pretrained weights (sum or cycle the RGB filters).
        model.encoder.set_in_channels(in_channels, pretrained=True)


def timm_weights_file(path: Path) -> dict:
    """The timm arguments that load a local weights file in place of the hub's (an encoder's kwargs):
    timm converts the file's format and adapts it to the model (used for plain ViTs)."""
    _require_file(path)
    return {"pretrained_cfg_overlay": {"file": str(path)}}


def hub_files_at_hand(repo_id: str, filenames: Sequence[str], revision: str | None = None) -> bool:
    """Whether the hub's files can be had: the hub is reachable, or they are all in the local cache
    (then the hub client is switched offline, to read the cache without minutes of retries)."""
    if can_reach(HUB_HOST):
        return True
    cached = all(isinstance(try_to_load_from_cache(repo_id, name, revision=revision), str) for name in filenames)
    if cached:
        hf_constants.HF_HUB_OFFLINE = True
    return cached


def _hub_location(encoder_name: str, weights: str) -> tuple[str, str, str | None] | None:
    """The hub repository, file and revision of an encoder's pretrained weights; None when not on the hub."""
    if encoder_name.startswith("tu-"):  # timm's own hub repositories (timm/<model>.<tag>)
        import timm

        try:
            config = timm.models.get_pretrained_cfg(encoder_name[3:])
        except RuntimeError:  # an unknown pretrained tag: timm names it when building
            return None
        if not (config and config.hf_hub_id):
            return None
        return config.hf_hub_id, config.hf_hub_filename or "model.safetensors", None
    settings = smp.encoders.encoders.get(encoder_name, {}).get("pretrained_settings", {}).get(weights)
    if settings is None:
        return None  # smp itself names the valid weights
    return settings["repo_id"], "model.safetensors", settings["revision"]


def check_hub_weights(encoder_name: str, weights: str) -> None:
    """Fails fast with a clear message when hub weights are neither cached nor reachable."""
    location = _hub_location(encoder_name, weights)
    if location is None:
        return
    repo_id, filename, revision = location
    if not hub_files_at_hand(repo_id, [filename], revision):
        raise ConfigError(
            f"model.encoder_weights={weights}: the {encoder_name} weights are not in the local cache "
            f"and {HUB_HOST} cannot be reached. Train from scratch with model.encoder_weights=null, "
            "or point model.encoder_weights at a local weights file (.pth or .safetensors)."
        )


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
    if weights and not looks_like_path(str(weights)):
        stats = _pretrained_statistics(cfg["encoder_name"], str(weights))
    mean, std = stats or (IMAGENET_MEAN, IMAGENET_STD)
    return _fit_channels(mean, in_channels), _fit_channels(std, in_channels)
