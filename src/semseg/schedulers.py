"""Learning-rate schedule: linear warm-up, then poly or cosine decay, stepped every batch.

Built from torch.optim.lr_scheduler parts; only the choice between them lives here.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, PolynomialLR, SequentialLR

from semseg.errors import ConfigError

SCHEDULES = ("poly", "cosine", "constant")


def build_scheduler(optimizer: Optimizer, cfg: Mapping, total_steps: int) -> LRScheduler:
    """Per-step schedule over ``total_steps`` optimizer steps.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        cfg: ``name`` (poly | cosine | constant), ``warmup_ratio`` (share of the steps spent
            ramping linearly up from ``warmup_start_factor``), ``power`` (poly), ``min_lr_ratio``
            (cosine floor as a share of the base rate).
        total_steps: optimizer steps of the whole fit (``trainer.estimated_stepping_batches``).
    """
    warmup = min(int(cfg.get("warmup_ratio", 0.0) * total_steps), max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    match cfg["name"]:
        case "poly":
            decay: LRScheduler = PolynomialLR(optimizer, total_iters=decay_steps, power=cfg.get("power", 0.9))
        case "cosine":
            base_lr = optimizer.param_groups[0]["lr"]
            decay = CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=base_lr * cfg.get("min_lr_ratio", 0.0))
        case "constant":
            decay = ConstantLR(optimizer, factor=1.0, total_iters=0)
        case other:
            raise ConfigError(f"scheduler.name={other}: valid schedules are {', '.join(SCHEDULES)}.")
    if warmup == 0:
        return decay
    ramp = LinearLR(optimizer, start_factor=cfg.get("warmup_start_factor", 0.01), total_iters=warmup)
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup])
