"""Fine-tuning controls: the encoder frozen or at its own learning rate, and no weight decay on norm
layers and biases, as the optimizer's parameter groups.

Pure functions of the module and of the keys semseg reads itself: ``model.freeze_encoder``,
``param_groups.encoder_lr_mult`` and ``param_groups.no_decay_norm_bias``. The optimizer stays
Hydra's to build from the ``optimizer`` config, which holds the optimizer class's arguments only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from semseg.errors import ConfigError

# The keys of the param_groups config. Checkpoints of runs from before it hold them in the optimizer
# config (``legacy_grouping``).
GROUPING_KEYS = ("encoder_lr_mult", "no_decay_norm_bias")

# Layers whose parameters scale and shift normalised activations: decaying them towards 0 shrinks
# the activations instead of regularising the fit. Subclasses count (timm's norm + activation layers).
NORM_LAYERS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
)

NO_DECAY_SUFFIX = "_no_decay"


@dataclass(frozen=True)
class FineTuning:
    """The checked fine-tuning settings of a run.

    Attributes:
        freeze_encoder: False (trained throughout), True (frozen throughout), or N > 0: frozen for
            the first N epochs, trained from epoch N on (epochs counted from 0, as ``current_epoch``).
        encoder_lr_mult: the encoder's learning rate as a share of ``optimizer.lr``.
        no_decay_norm_bias: no weight decay on norm layers' parameters and on biases. Absent from the
            config (runs from before the key) it is False: every parameter decays, in the one group
            those runs' saved optimizer state has.
    """

    freeze_encoder: bool | int = False
    encoder_lr_mult: float = 1.0
    no_decay_norm_bias: bool = False

    @classmethod
    def from_config(cls, model: Mapping, param_groups: Mapping, has_encoder: bool = True) -> FineTuning:
        """The settings of the ``model`` and ``param_groups`` configs.

        Raises:
            ConfigError: a value out of range, or the encoder's settings for a network without one.
        """
        settings = cls(
            _freeze_encoder(model.get("freeze_encoder", False)),
            _encoder_lr_mult(param_groups.get("encoder_lr_mult", 1.0)),
            _no_decay_norm_bias(param_groups.get("no_decay_norm_bias", False)),
        )
        if not has_encoder and settings.freeze_encoder is not False:
            frozen = str(settings.freeze_encoder).lower()
            raise ConfigError(
                f"model.freeze_encoder={frozen}: model.arch={model.get('arch')} has no encoder to freeze; "
                "leave model.freeze_encoder=false."
            )
        if not has_encoder and settings.encoder_lr_mult != 1.0:
            raise ConfigError(
                f"param_groups.encoder_lr_mult={settings.encoder_lr_mult:g}: model.arch={model.get('arch')} has no "
                "encoder to give a rate of its own; leave param_groups.encoder_lr_mult=1.0."
            )
        return settings

    def encoder_frozen_at(self, epoch: int) -> bool:
        """Whether the encoder is frozen during ``epoch`` (a rule of the epoch alone: a resumed run
        follows it as a run that never stopped)."""
        if isinstance(self.freeze_encoder, bool):
            return self.freeze_encoder
        return epoch < self.freeze_encoder

    @property
    def encoder_apart(self) -> bool:
        """Whether the encoder's parameters need groups of their own: another rate, or waiting frozen
        in the optimizer for their epoch (frozen for good, they are left out of it)."""
        return self.encoder_lr_mult != 1.0 or not isinstance(self.freeze_encoder, bool)


def _freeze_encoder(value: Any) -> bool | int:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value >= 0:
        return value or False  # frozen for 0 epochs: never
    raise ConfigError(
        f"model.freeze_encoder={value}: use false, true, or a number of epochs N >= 0 "
        "(frozen for the first N epochs, then trained)."
    )


def _encoder_lr_mult(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"param_groups.encoder_lr_mult={value}: give a positive factor of optimizer.lr (e.g. 0.1); "
            "model.freeze_encoder=true keeps the encoder fixed."
        )
    return float(value)


def _no_decay_norm_bias(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"param_groups.no_decay_norm_bias={value}: use true or false.")
    return value


def legacy_grouping(optimizer: Mapping) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint's ``optimizer`` config from before the ``param_groups`` config, which held its
    keys: the optimizer's own arguments, and the grouping keys it held (absent: none)."""
    own = {key: value for key, value in optimizer.items() if key not in GROUPING_KEYS}
    return own, {key: value for key, value in optimizer.items() if key in GROUPING_KEYS}


def exempt_from_weight_decay(module: nn.Module) -> set[int]:
    """``id`` of every parameter of a norm layer (``NORM_LAYERS``) and of every bias in ``module``."""
    exempt = set()
    for layer in module.modules():
        for name, parameter in layer.named_parameters(recurse=False):
            if isinstance(layer, NORM_LAYERS) or name == "bias":
                exempt.add(id(parameter))
    return exempt


def parameter_groups(
    module: nn.Module, encoder: nn.Module | None, settings: FineTuning, lr: float | None
) -> list[dict[str, Any]]:
    """``module``'s parameters as an optimizer's parameter groups.

    The encoder (a submodule of ``module``, or None) is left out when frozen for good; it has groups
    of its own at ``lr * encoder_lr_mult`` when that factor is not 1, or when it is frozen for N
    epochs: its parameters wait there with no gradient (torch's optimizers skip them: no update, no
    decay, no state) and the schedule has covered the group from the first step when they join.
    With ``no_decay_norm_bias``, norm layers' parameters and biases go to groups of weight decay 0.

    The decoder's groups (decoder and head: all but the encoder) come first, so ``param_groups[0]``
    is the rate at ``optimizer.lr`` (train/lr, the progress bar). The groups are named ``decoder``,
    ``encoder`` (``network`` where the encoder is not apart), with ``_no_decay`` for the exempt
    ones; empty groups are left out. Without any split, one unnamed group of all the parameters in
    ``module.parameters()``'s order: the optimizer runs had before these settings, whose saved state
    still loads.

    Args:
        module: holds every parameter to optimise.
        encoder: the encoder submodule, or None.
        settings: the run's fine-tuning settings.
        lr: ``optimizer.lr`` (read only for ``encoder_lr_mult`` other than 1).
    """
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    exempt = exempt_from_weight_decay(module) if settings.no_decay_norm_bias else set()
    rest = "decoder" if settings.encoder_apart or settings.freeze_encoder is True else "network"
    groups: dict[str, list[nn.Parameter]] = {
        name: [] for part in (rest, "encoder") for name in (part, part + NO_DECAY_SUFFIX)
    }
    for parameter in module.parameters():
        in_encoder = id(parameter) in encoder_ids
        if in_encoder and settings.freeze_encoder is True:
            continue  # never trained: no optimizer state to hold, nor a rate to schedule
        part = "encoder" if in_encoder and settings.encoder_apart else rest
        groups[part + (NO_DECAY_SUFFIX if id(parameter) in exempt else "")].append(parameter)
    if rest == "network" and not groups["network" + NO_DECAY_SUFFIX]:
        return [{"params": groups["network"]}]
    return [_group(name, parameters, settings, lr) for name, parameters in groups.items() if parameters]


def _group(name: str, parameters: list[nn.Parameter], settings: FineTuning, lr: float | None) -> dict[str, Any]:
    group: dict[str, Any] = {"name": name, "params": parameters}
    if name.startswith("encoder") and settings.encoder_lr_mult != 1.0:
        if lr is None:
            raise ConfigError("param_groups.encoder_lr_mult scales optimizer.lr: set optimizer.lr as well.")
        group["lr"] = lr * settings.encoder_lr_mult
    if name.endswith(NO_DECAY_SUFFIX):
        group["weight_decay"] = 0.0
    return group


def logged_learning_rates(param_groups: list[dict[str, Any]]) -> dict[str, float]:
    """``train/lr``, the first group's rate (decoder and head, at ``optimizer.lr``), and
    ``train/lr_encoder``: the encoder's group's rate, the first group's where the encoder shares it,
    none where the encoder is left out of the optimizer (frozen for good)."""
    rates = {"train/lr": param_groups[0]["lr"]}
    encoder = next((group for group in param_groups if group.get("name", "").startswith("encoder")), None)
    if encoder is not None:
        rates["train/lr_encoder"] = encoder["lr"]
    elif not param_groups[0].get("name", "").startswith("decoder"):  # unnamed: a checkpoint's single group
        rates["train/lr_encoder"] = param_groups[0]["lr"]
    return rates
