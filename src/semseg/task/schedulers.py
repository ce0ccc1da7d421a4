"""Learning-rate schedule: linear warm-up, then poly or cosine decay, stepped every batch.

Built from torch.optim.lr_scheduler parts; only the choice between them lives here. The settings'
values live in conf/scheduler/*.yaml only: a key missing here is an error, never a default of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    PolynomialLR,
    SequentialLR,
)

from semseg.errors import ConfigError

SCHEDULES = ("poly", "cosine", "constant")


def _setting(cfg: Mapping, key: str) -> Any:
    """``cfg[key]``, or a ConfigError naming ``scheduler.<key>`` and the fix."""
    if key not in cfg:
        raise ConfigError(
            f"scheduler.{key} is missing: set it (+scheduler.{key}=<value> on the command line), or "
            f"choose a preset of conf/scheduler/ ({', '.join(SCHEDULES)}) that sets it."
        )
    return cfg[key]


def build_scheduler(optimizer: Optimizer, cfg: Mapping, total_steps: int) -> LRScheduler:
    """Per-step schedule over ``total_steps`` optimizer steps.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        cfg: ``name`` (poly | cosine | constant), ``warmup_ratio`` (share of the steps spent
            ramping linearly up from ``warmup_start_factor``), ``power`` (poly), ``min_lr_ratio``
            (cosine floor as a share of the base rate).
        total_steps: optimizer steps of the whole fit (``trainer.estimated_stepping_batches``).

    Raises:
        ConfigError: a setting the schedule reads is missing, or the name is not a schedule.
    """
    warmup = min(int(_setting(cfg, "warmup_ratio") * total_steps), max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    match _setting(cfg, "name"):
        case "poly":
            decay: LRScheduler = PolynomialLR(optimizer, total_iters=decay_steps, power=_setting(cfg, "power"))
        case "cosine":
            decay = _cosine_decay(optimizer, decay_steps, _setting(cfg, "min_lr_ratio"))
        case "constant":
            decay = ConstantLR(optimizer, factor=1.0, total_iters=0)
        case other:
            raise ConfigError(f"scheduler.name={other}: valid schedules are {', '.join(SCHEDULES)}.")
    if warmup == 0:
        return decay
    ramp = LinearLR(optimizer, start_factor=_setting(cfg, "warmup_start_factor"), total_iters=warmup)
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup])


def _cosine_decay(optimizer: Optimizer, steps: int, min_lr_ratio: float) -> LRScheduler:
    """Cosine decay over ``steps`` to ``min_lr_ratio`` x each parameter group's own rate.

    torch's CosineAnnealingLR has one floor for all groups (``eta_min``): right where they share one
    rate or the floor is 0, and kept there (the checkpoints of such runs hold its state). Groups at
    rates of their own (``optimizer.encoder_lr_mult``) get the same factor from a LambdaLR instead,
    so that the encoder's rate stays the same share of the decoder's down to the floor.
    """
    rates = {group["lr"] for group in optimizer.param_groups}
    if len(rates) == 1 or min_lr_ratio == 0:
        return CosineAnnealingLR(optimizer, T_max=steps, eta_min=max(rates) * min_lr_ratio)

    def factor(step: int) -> float:
        return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * min(step, steps) / steps)) / 2

    return LambdaLR(optimizer, factor)
