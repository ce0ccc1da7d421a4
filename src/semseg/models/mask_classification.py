"""Mask classification: Mask2Former (Cheng et al., CVPR 2022) and EoMT (Kerssies et al., CVPR 2025),
Hugging Face transformers' models, as semseg networks.

They predict a set of (class, mask) pairs instead of a class per pixel, and train with their own
Hungarian-matched loss (``MaskClassifier.training_loss``); their forward pass gives per-pixel class
log-probabilities, as transformers' ``post_process_semantic_segmentation`` reads the pairs, so
metrics, tiling, TTA and export see them as any other model's logits.

transformers is the ``mask`` extra: it is imported only when such a model is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.extras import require_extra

MASK_ARCHITECTURES = ("mask2former", "eomt")

# The architectures model.pretrained=null builds (random initial weights, offline): small enough
# to train on a CPU in minutes (the synthetic set, the tests); model.hf_config overrides any key.
# Real images want a pretrained model: model.pretrained=<hub id or folder>.
TINY: dict[str, dict[str, Any]] = {
    "mask2former": {
        "backbone_config": {
            "model_type": "swin",
            "embed_dim": 32,
            "depths": [1, 1, 2, 1],
            "num_heads": [1, 2, 4, 8],
            "window_size": 7,
            "drop_path_rate": 0.0,
            "out_features": ["stage1", "stage2", "stage3", "stage4"],
        },
        "feature_size": 64,
        "mask_feature_size": 64,
        "hidden_dim": 64,
        "num_attention_heads": 4,
        "encoder_layers": 2,
        "encoder_feedforward_dim": 128,
        "decoder_layers": 4,  # transformers builds one fewer: 3 layers, one per feature level (all trained)
        "dim_feedforward": 128,
        "num_queries": 20,
        "train_num_points": 4096,
    },
    "eomt": {
        "hidden_size": 96,
        "num_hidden_layers": 6,
        "num_attention_heads": 3,
        "patch_size": 16,
        "image_size": 64,
        "num_blocks": 2,  # the last 2 layers see the queries
        "num_register_tokens": 1,
        "num_queries": 20,
        "train_num_points": 4096,
    },
}
# Config keys semseg sets itself (from the data), or that only describe a saved file.
SET_BY_SEMSEG = ("num_labels", "id2label", "label2id", "num_channels")
NOT_ARCHITECTURE = (
    *SET_BY_SEMSEG,
    "transformers_version",
    "architectures",
    "_name_or_path",
    "model_type",
    "dtype",
    "torch_dtype",
)
# Mask2Former's pixel decoder needs the backbone's four stages at strides 4 ... 32.
MASK2FORMER_STRIDE = 32
# Keys of the model config group that describe smp models: null (or empty) for these.
SMP_ONLY = {
    "encoder_name": "the backbone is part of model.hf_config (or model.pretrained's model)",
    "encoder_weights": "pretrained weights come with model.pretrained=<hub id or folder>",
    "from_pretrained": "a Hugging Face model is model.pretrained=<hub id or folder>",
    "kwargs": "the architecture's settings are model.hf_config",
}


def check_model_keys(cfg: Mapping) -> None:
    """Raises a one-line ``ConfigError`` for a key of the smp models set for a mask-classification model."""
    arch = cfg["arch"].lower()
    for key, reason in SMP_ONLY.items():
        if cfg.get(key):
            raise ConfigError(f"model.{key}={cfg[key]}: model.arch={arch} takes no {key} ({reason}); leave it unset.")
    given = dict(cfg.get("hf_config") or {})
    for key in SET_BY_SEMSEG:
        if key in given:
            raise ConfigError(
                f"model.hf_config.{key}: semseg sets it from the data (data.num_classes, data.in_channels); remove it."
            )


def _model_classes(arch: str) -> tuple[type, type]:
    require_extra("mask", f"model.arch={arch}")
    from semseg.models.hf_mask import MODELS

    return MODELS[arch]


def _is_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~"))


def _pretrained_source(source: str) -> str:
    """A local folder (expanded) or a hub id that can be had; else a one-line ``ConfigError``."""
    from semseg.models.weights import HUB_HOST, hub_files_at_hand

    folder = Path(source).expanduser()
    if folder.is_dir():
        return str(folder)
    fix = "model.pretrained=null trains from random initial weights (model.hf_config)"
    if not _is_hub_id(source):
        raise ConfigError(
            f"model.pretrained={source}: no such folder. Give a folder written by transformers' save_pretrained, "
            f"a Hugging Face hub id (owner/name), or {fix}."
        )
    if not hub_files_at_hand(source, ["config.json"]):
        raise ConfigError(
            f"model.pretrained={source}: not in the local Hugging Face cache and {HUB_HOST} cannot be reached. "
            f"Download it once online, give a local folder, or {fix}."
        )
    return source


def _config(cfg: Mapping, in_channels: int, num_classes: int):
    """The transformers config: model.pretrained's (or the tiny default), model.hf_config over it."""
    arch = cfg["arch"].lower()
    config_class, _ = _model_classes(arch)
    overrides = dict(cfg.get("hf_config") or {})
    if cfg.get("pretrained"):
        source = _pretrained_source(str(cfg["pretrained"]))
        try:
            base = config_class.from_pretrained(source).to_dict()
        except (OSError, ValueError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigError(f"model.pretrained={cfg['pretrained']}: cannot read its config ({first}).") from error
        if base.get("model_type") != config_class.model_type:
            raise ConfigError(
                f"model.pretrained={cfg['pretrained']} is a {base.get('model_type')} model, not {arch}: "
                f"use model={base.get('model_type')} or a {arch} model."
            )
    else:
        base = TINY[arch]
    known = set(config_class().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"model.hf_config: {', '.join(unknown)} not in transformers' {config_class.__name__}.")
    settings = {k: v for k, v in {**base, **overrides}.items() if k not in NOT_ARCHITECTURE}
    if arch == "mask2former":
        backbone = dict(settings.get("backbone_config") or {})
        settings["backbone_config"] = {**backbone, "num_channels": in_channels}
    else:
        settings["num_channels"] = in_channels
        if not isinstance(settings.get("patch_size", 16), int):
            raise ConfigError(f"model.hf_config.patch_size={settings['patch_size']}: give one side (square patches).")
    try:
        return config_class(**settings, num_labels=num_classes)
    except (TypeError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"model.hf_config={overrides}: {first}") from error


def resolved_model_config(cfg: Mapping, in_channels: int, num_classes: int) -> dict[str, Any]:
    """The ``model`` config with ``hf_config`` holding the whole architecture (model.pretrained's or
    the tiny default, with the overrides): saved as the module's hyper-parameters, so a checkpoint
    rebuilds its network offline, whatever the hub or the defaults here become."""
    check_model_keys(cfg)
    config = _config(cfg, in_channels, num_classes)
    # The config class's fields only: a hub config's leftovers of older transformers versions
    # (use_timm_backbone, ...) shaped the model already and would be refused as overrides.
    fields = set(type(config)().to_dict())
    settings = {k: v for k, v in config.to_dict().items() if k in fields and k not in NOT_ARCHITECTURE}
    if isinstance(settings.get("backbone_config"), dict):  # its model_type stays: it names the backbone
        noise = set(NOT_ARCHITECTURE) - {"model_type", "num_channels"}
        settings["backbone_config"] = {k: v for k, v in settings["backbone_config"].items() if k not in noise}
    return {**cfg, "hf_config": settings}


def semantic_log_probabilities(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Per-pixel class log-probabilities (N, C, H, W) of (class, mask) pairs, as transformers'
    ``post_process_semantic_segmentation`` scores them: each query's class probabilities without
    "no object", times its mask's sigmoid, summed over the queries; normalised over the classes.

    Args:
        class_logits: (N, Q, C + 1), the last being "no object".
        mask_logits: (N, Q, h, w), upsampled bilinearly to ``size`` first.
        size: the output's (H, W).
    """
    device = mask_logits.device.type
    if torch.is_autocast_enabled(device):  # in float32: bfloat16 products of probabilities sum to 1 +- 0.01
        with torch.autocast(device, enabled=False):
            return semantic_log_probabilities(class_logits.float(), mask_logits.float(), size)
    masks = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False).sigmoid()
    classes = class_logits.softmax(dim=-1)[..., :-1]
    scores = torch.einsum("nqc,nqhw->nchw", classes, masks)
    # Where every mask is off the scores are all near 0: normalised, they still sum to 1.
    probabilities = scores / scores.sum(dim=1, keepdim=True).clamp(min=1e-8)
    return probabilities.clamp(min=1e-8).log()


def mask_targets(target: torch.Tensor, ignore_index: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A class-index map (N, H, W) as the models' targets: per image, a binary mask (float) of each
    class present and its class. Ignored pixels are in no mask (the reference implementation's
    semantic targets do the same); an image with no labelled pixel has no masks (0, H, W)."""
    masks, classes = [], []
    for image in target:
        present = torch.unique(image[image != ignore_index])
        masks.append((image[None] == present[:, None, None]).float())
        classes.append(present)
    return masks, classes


class MaskClassifier(nn.Module):
    """A transformers mask-classification model (``model.arch``: mask2former, eomt) as a semseg network.

    Args:
        cfg: the ``model`` config: ``arch``, ``pretrained`` (a hub id or a save_pretrained folder,
            or null: random initial weights), ``hf_config`` (the transformers config's keys, over
            the pretrained model's or ``TINY``'s).
        in_channels: image channels.
        num_classes: classes (the models add "no object").
    """

    def __init__(self, cfg: Mapping, in_channels: int, num_classes: int):
        super().__init__()
        check_model_keys(cfg)
        self.arch = cfg["arch"].lower()
        config = _config(cfg, in_channels, num_classes)
        _, model_class = _model_classes(self.arch)
        if cfg.get("pretrained"):
            source = _pretrained_source(str(cfg["pretrained"]))
            try:
                # ignore_mismatched_sizes: the class head (and, for other channels, the patch
                # embedding) start anew when the data's classes differ from the model's.
                self.model = model_class.from_pretrained(source, config=config, ignore_mismatched_sizes=True)
            except OSError as error:
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise ConfigError(
                    f"model.pretrained={cfg['pretrained']}: cannot load its weights ({first}). "
                    "model.pretrained=null trains from random initial weights."
                ) from error
        else:
            self.model = model_class(config)
        if self.arch == "mask2former":
            # transformers' Swin backbone keeps the classifier's final norm, which no feature map
            # passes: frozen, so that DDP finds every trainable parameter used.
            unused = getattr(getattr(self.encoder, "swin", None), "layernorm", None)
            if unused is not None:
                unused.requires_grad_(False)
        # EoMT: twice the patch, so a side has at least 2 patches (torch.export assumes sizes above
        # 1; DPT pads alike). Mask2Former: its backbone's coarsest stage.
        self.stride = 2 * int(config.patch_size) if self.arch == "eomt" else MASK2FORMER_STRIDE

    @property
    def encoder(self) -> nn.Module:
        """The backbone (Swin for Mask2Former; EoMT's patch embedding and the ViT layers before the
        queries join): what model.freeze_encoder and param_groups.encoder_lr_mult act on."""
        if self.arch == "mask2former":
            return self.model.model.pixel_level_module.encoder
        model = self.model
        return nn.ModuleList([model.embeddings, *model.layers[: model.num_hidden_layers - model.config.num_blocks]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities (N, C, H, W) of normalised images (N, C_in, H, W), sides multiples of ``stride``."""
        output = self.model(pixel_values=x)
        return semantic_log_probabilities(output.class_queries_logits, output.masks_queries_logits, x.shape[-2:])

    def training_loss(
        self, x: torch.Tensor, target: torch.Tensor, ignore_index: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The model's own loss (Hungarian matching of predicted and true masks; weighted class
        cross-entropy, mask BCE and Dice, on every decoder layer) and its terms, each summed over
        the layers: ``cross_entropy``, ``mask``, ``dice``.

        Args:
            x: normalised images (N, C_in, H, W), sides multiples of ``stride``.
            target: class indices (N, H, W), ``ignore_index`` at ignored pixels.
        """
        masks, classes = mask_targets(target, ignore_index)
        self.model.reported_loss_terms = []
        output = self.model(pixel_values=x, mask_labels=masks, class_labels=classes)
        terms: dict[str, torch.Tensor] = {}
        for reported in self.model.reported_loss_terms:
            for name, value in reported.items():
                # loss_dice_0, loss_dice_1 ...: Mask2Former's auxiliary layers, under their term.
                base = next(term for term in ("cross_entropy", "mask", "dice") if name.startswith(f"loss_{term}"))
                terms[base] = terms[base] + value if base in terms else value
        self.model.reported_loss_terms = []
        return output.loss, terms


def export_refusal(arch: str, export_format: str) -> str | None:
    """Why ``export.py format=<export_format>`` cannot export a ``model.arch=<arch>`` checkpoint, or None."""
    arch = arch.lower()
    if arch not in MASK_ARCHITECTURES:
        return None
    if export_format == "smp":
        fix = "format=onnx or format=torch_export" if arch == "eomt" else "predict.py with the checkpoint"
        return f"format=smp: model.arch={arch} is a transformers model, which smp cannot load; use {fix}."
    if arch == "mask2former":
        # Tried with torch 2.14 and transformers 5.25 (docs/models.md#mask-classification-mask2former-eomt):
        # the ONNX export failed inside torch.export, the torch.export one ended in a size mismatch, and
        # a smaller Swin's program refused inputs of other sizes: no "any height and width" export.
        return (
            f"format={export_format}: Mask2Former's Swin backbone does not export for every input size (its "
            "attention windows shrink to small feature maps, a branch on the size that torch.export fixes to the "
            "example's); use model=eomt for an exportable mask-classification model, or predict.py with the checkpoint."
        )
    return None
