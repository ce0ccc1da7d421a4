"""Losses as named, weighted terms: ``loss.terms: {ce: 1.0, dice: 1.0}`` is CE + Dice.

Each term comes from torch or smp.losses; the compound only sums them and reports each one, so
``train/loss_<term>`` shows which part of the objective moves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import segmentation_models_pytorch as smp
import torch
from torch import nn

from semseg.errors import ConfigError

TERMS = ("ce", "dice")


def build_term(name: str, ignore_index: int, class_weights: Sequence[float] | None) -> nn.Module:
    """One loss term on (N, C, H, W) logits and (N, H, W) class-index targets."""
    match name:
        case "ce":
            weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float)
            return nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        case "dice":
            return smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE, from_logits=True, ignore_index=ignore_index)
        case _:
            raise ConfigError(f"unknown loss term '{name}' in loss.terms; valid terms: {', '.join(TERMS)}.")


class CompoundLoss(nn.Module):
    """Weighted sum of named terms; returns the total and each (unweighted) term."""

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = dict(weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = {name: term(logits, target) for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, values


def build_loss(
    cfg: Mapping, num_classes: int, ignore_index: int, class_weights: Sequence[float] | None = None
) -> CompoundLoss:
    """Builds the ``loss`` config group.

    Args:
        cfg: ``terms`` (name -> weight).
        num_classes: number of classes, to check ``class_weights`` against.
        ignore_index: target value every term ignores.
        class_weights: per-class weights for the cross-entropy term, or None.
    """
    terms = dict(cfg.get("terms") or {})
    if not terms:
        raise ConfigError(f"loss.terms is empty; give at least one of {', '.join(TERMS)} with a weight.")
    if class_weights is not None and len(class_weights) != num_classes:
        raise ConfigError(f"loss.class_weights has {len(class_weights)} values but data.num_classes={num_classes}.")
    modules = {name: build_term(name, ignore_index, class_weights) for name in terms}
    return CompoundLoss(modules, {name: float(weight) for name, weight in terms.items()})
