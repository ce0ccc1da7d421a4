"""Learning-rate schedules: linear warm-up, then poly or cosine decay, stepped every batch.

Built from torch.optim.lr_scheduler parts. Each schedule is a function that conf/scheduler/*.yaml
names as its ``_target_``; the settings' values live there only: a function's arguments have no
defaults, so a key missing from the config is an error, never a default of its own.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

from hydra.utils import get_method, instantiate
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


def build_scheduler(optimizer: Optimizer, cfg: Mapping, total_steps: int) -> LRScheduler:
    """The ``scheduler`` config's schedule of ``optimizer`` over ``total_steps`` optimizer steps
    (``trainer.estimated_stepping_batches``): its ``_target_`` (``poly``, ``cosine``, ``constant``
    below, or one's own function of the same arguments) called with the optimizer and the steps.

    Raises:
        ConfigError: the config lacks ``_target_`` or a setting its schedule takes.
    """
    cfg = dict(cfg)
    if "_target_" not in cfg and "name" in cfg:  # checkpoints of runs from before the _target_ entries
        cfg["_target_"] = f"{__name__}.{cfg.pop('name')}"
    # Named here, before Hydra's instantiate, whose TypeError would not say which config key is missing.
    taken = list(inspect.signature(get_method(cfg["_target_"])).parameters) if "_target_" in cfg else ["_target_"]
    for key in taken:
        if key not in (*cfg, "optimizer", "total_steps"):
            raise ConfigError(
                f"scheduler.{key} is missing: set it (+scheduler.{key}=<value> on the command line), or choose a "
                "preset of conf/scheduler/ (poly, cosine, constant) that sets it."
            )
    return instantiate(cfg, optimizer=optimizer, total_steps=total_steps)


def poly(
    optimizer: Optimizer, total_steps: int, warmup_ratio: float, warmup_start_factor: float, power: float
) -> LRScheduler:
    """Linear warm-up over ``warmup_ratio`` of the steps from ``warmup_start_factor`` x the rate,
    then polynomial decay to 0 (DeepLab's "poly" policy) with exponent ``power``."""
    warmup = _warmup_steps(warmup_ratio, total_steps)
    decay = PolynomialLR(optimizer, total_iters=max(total_steps - warmup, 1), power=power)
    return _after_warmup(optimizer, decay, warmup, warmup_start_factor)


def cosine(
    optimizer: Optimizer, total_steps: int, warmup_ratio: float, warmup_start_factor: float, min_lr_ratio: float
) -> LRScheduler:
    """Linear warm-up as ``poly``'s, then cosine decay to ``min_lr_ratio`` x each group's rate."""
    warmup = _warmup_steps(warmup_ratio, total_steps)
    decay = _cosine_decay(optimizer, max(total_steps - warmup, 1), min_lr_ratio)
    return _after_warmup(optimizer, decay, warmup, warmup_start_factor)


def constant(optimizer: Optimizer, total_steps: int, warmup_ratio: float, warmup_start_factor: float) -> LRScheduler:
    """Linear warm-up as ``poly``'s, then the rate itself."""
    warmup = _warmup_steps(warmup_ratio, total_steps)
    return _after_warmup(optimizer, ConstantLR(optimizer, factor=1.0, total_iters=0), warmup, warmup_start_factor)


def _warmup_steps(warmup_ratio: float, total_steps: int) -> int:
    return min(int(warmup_ratio * total_steps), max(total_steps - 1, 0))


def _after_warmup(optimizer: Optimizer, decay: LRScheduler, warmup: int, start_factor: float) -> LRScheduler:
    if warmup == 0:
        return decay
    ramp = LinearLR(optimizer, start_factor=start_factor, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup])


def _cosine_decay(optimizer: Optimizer, steps: int, min_lr_ratio: float) -> LRScheduler:
    """Cosine decay over ``steps`` to ``min_lr_ratio`` x each parameter group's own rate.

    torch's CosineAnnealingLR has one floor for all groups (``eta_min``): right where they share one
    rate or the floor is 0, and kept there (the checkpoints of such runs hold its state). Groups at
    rates of their own (``param_groups.encoder_lr_mult``) get the same factor from a LambdaLR instead,
    so that the encoder's rate stays the same share of the decoder's down to the floor.
    """
    rates = {group["lr"] for group in optimizer.param_groups}
    if len(rates) == 1 or min_lr_ratio == 0:
        return CosineAnnealingLR(optimizer, T_max=steps, eta_min=max(rates) * min_lr_ratio)

    def factor(step: int) -> float:
        return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * min(step, steps) / steps)) / 2

    return LambdaLR(optimizer, factor)
