"""Losses as named, weighted terms: ``loss.terms: {ce: 1.0, dice: 1.0}`` is CE + Dice.

A term's value is its weight, or a mapping of its weight and its own arguments:
``tversky: {weight: 1.0, alpha: 0.3, beta: 0.7}``. Each term comes from torch or smp.losses
(``boundary_ce`` is written here: neither has it); the compound only sums them and reports each
one, so ``train/loss_<term>`` shows which part of the objective moves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.task.metrics import boundary_band

MULTICLASS = smp.losses.MULTICLASS_MODE
TERMS = ("ce", "dice", "focal", "lovasz", "tversky", "boundary_ce", "ohem_ce")
# The terms with a sigmoid form (data.mode binary and multilabel): ce is then binary cross-entropy.
SIGMOID_TERMS = ("ce", "dice", "focal", "lovasz", "tversky")
# boundary_ce's band width when its config names none (``loss.terms.boundary_ce: 1.0``);
# conf/loss/boundary_ce.yaml names it, so that ``loss.terms.boundary_ce.width=`` can override it.
DEFAULT_EDGE_WIDTH = 3


class BoundaryWeightedCE(nn.Module):
    """Cross-entropy in which pixels near class edges weigh ``edge_weight`` times more.

    The idea of U-Net's weight map (Ronneberger et al. 2015, errors at borders between touching
    objects cost more), simplified to a band: a pixel with another class within ``width`` pixels
    gets ``edge_weight``, every other pixel 1. The mean is taken over the weights of the counted
    pixels, so the loss stays on CE's scale. Written here because neither torch nor smp has it.

    Args:
        ignore_index: target value left out.
        class_weights: optional per-class weights, multiplied in.
        width: band width in pixels (chessboard distance), as in ``BoundaryIoU``.
        edge_weight: weight of the pixels in the band.
    """

    def __init__(
        self,
        ignore_index: int,
        class_weights: torch.Tensor | None = None,
        width: int = DEFAULT_EDGE_WIDTH,
        edge_weight: float = 5.0,
    ):
        super().__init__()
        self.ignore_index, self.width, self.edge_weight = ignore_index, width, edge_weight
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        classes = torch.where(valid, target, 0)  # any class at ignored pixels: their weight is zeroed
        pixel_loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        band = boundary_band(classes, valid, self.width)
        weights = 1.0 + (self.edge_weight - 1.0) * band.to(logits.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights[classes]
        weights = weights * valid
        return (weights * pixel_loss).sum() / weights.sum().clamp(min=torch.finfo(logits.dtype).eps)


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels only: online hard example mining (Shrivastava et al. 2016)
    as MMSegmentation's ``OHEMPixelSampler`` applies it to segmentation.

    A pixel is kept when its probability of its true class is below ``threshold``; when fewer than
    ``min_kept`` pixels per image are that hard, the threshold rises to the probability of the
    ``min_kept``-th hardest, so at least that many count (MMSegmentation's rule, over the batch).
    The loss is the (class-weighted) mean over the kept pixels: easy pixels, most of them background
    and road, stop diluting the gradient of the rare and the difficult. Written here because
    neither torch nor smp has it.

    Args:
        ignore_index: target value left out.
        class_weights: optional per-class weights, multiplied in.
        threshold: probability of the true class below which a pixel is hard (MMSegmentation: 0.7).
        min_kept: pixels kept per image at least (MMSegmentation: 100000 at 512x1024, a fifth of them).
    """

    def __init__(
        self,
        ignore_index: int,
        class_weights: torch.Tensor | None = None,
        threshold: float = 0.7,
        min_kept: int = 10000,
    ):
        super().__init__()
        if not 0 < threshold <= 1 or int(min_kept) != min_kept or min_kept < 0:
            raise ConfigError(
                f"loss.terms.ohem_ce: threshold={threshold} must be in (0, 1] and min_kept={min_kept} a "
                "whole number >= 0 (MMSegmentation's: threshold 0.7, min_kept 100000 per 512x1024 image)."
            )
        self.ignore_index, self.threshold, self.min_kept = ignore_index, float(threshold), int(min_kept)
        self.register_buffer("class_weights", class_weights)

    @torch.no_grad()
    def kept(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N, H, W) bool: the pixels the loss counts."""
        valid = target != self.ignore_index
        classes = torch.where(valid, target, 0).unsqueeze(1)
        true_probability = logits.softmax(dim=1).gather(1, classes).squeeze(1).float()
        # MMSegmentation's sort of the counted pixels' probabilities, without selecting them (a
        # boolean selection, or a k from their count, would wait for the GPU at every step):
        # ignored pixels sort last, and the rank is clamped to the count as a tensor.
        ordered = torch.where(valid, true_probability, 2.0).flatten().sort().values
        rank = (valid.sum() - 1).clamp(min=0, max=self.min_kept * target.shape[0])
        floor = ordered.gather(0, rank.view(1))[0]
        return valid & (true_probability < torch.clamp(floor, min=self.threshold))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = self.kept(logits, target)
        classes = torch.where(keep, target, 0)
        pixel_loss = F.cross_entropy(logits, classes, reduction="none")
        weights = keep.to(logits.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights[classes]
        return (weights * pixel_loss).sum() / weights.sum().clamp(min=torch.finfo(logits.dtype).eps)


def build_term(name: str, ignore_index: int, class_weights: Sequence[float] | None, **params: Any) -> nn.Module:
    """One loss term on (N, C, H, W) logits and (N, H, W) class-index targets.

    ``class_weights`` (if given) weigh every term that supports them (all but ``lovasz``);
    ``params`` are the term's own arguments (for example ``gamma`` of ``focal``).
    """
    weights = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float)
    listed = None if class_weights is None else list(class_weights)
    match name:
        case "ce":
            return nn.CrossEntropyLoss(weight=weights, ignore_index=ignore_index, **params)
        case "dice":
            return smp.losses.DiceLoss(MULTICLASS, ignore_index=ignore_index, class_weights=listed, **params)
        case "focal":  # Lin et al. 2017: (1 - p)^gamma down-weights the easy pixels
            return smp.losses.FocalLoss(MULTICLASS, ignore_index=ignore_index, class_weights=listed, **params)
        case "lovasz":  # Berman et al. 2018: a convex surrogate of the IoU itself
            return smp.losses.LovaszLoss(MULTICLASS, ignore_index=ignore_index, **params)
        case "tversky":  # Salehi et al. 2017: alpha weighs false positives, beta false negatives
            return smp.losses.TverskyLoss(MULTICLASS, ignore_index=ignore_index, class_weights=listed, **params)
        case "boundary_ce":
            return BoundaryWeightedCE(ignore_index, weights, **params)
        case "ohem_ce":
            return OhemCrossEntropy(ignore_index, weights, **params)
        case _:
            raise ConfigError(f"unknown loss term '{name}' in loss.terms; valid terms: {', '.join(TERMS)}.")


class SigmoidTerm(nn.Module):
    """An smp loss in binary or multilabel mode, given float targets of the logits' shape: a binary
    task's (N, H, W) targets become (N, 1, H, W). Ignored pixels keep ``ignore_index``, which the
    smp losses leave out."""

    def __init__(self, term: nn.Module):
        super().__init__()
        self.term = term

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == logits.dim() - 1:
            target = target.unsqueeze(1)
        return self.term(logits, target.to(logits.dtype))


class MaskedBCE(nn.Module):
    """smp's ``SoftBCEWithLogitsLoss`` averaged over the pixels that count (smp's own mean would
    count the ignored ones, as zeros)."""

    def __init__(self, ignore_index: int, **params: Any):
        super().__init__()
        self.ignore_index = ignore_index
        self.bce = smp.losses.SoftBCEWithLogitsLoss(ignore_index=None, reduction="none", **params)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        pixel_loss = self.bce(logits, torch.where(valid, target, 0)) * valid
        return pixel_loss.sum() / valid.sum().clamp(min=1)


def build_sigmoid_term(name: str, ignore_index: int, mode: str, **params: Any) -> nn.Module:
    """One loss term of a binary or multilabel task (``mode``: smp's ``binary`` or ``multilabel``)
    on (N, K, H, W) logits and (N, H, W) 0/1 targets (binary) or (N, K, H, W) 0/1 planes."""
    match name:
        case "ce":
            term = MaskedBCE(ignore_index, **params)
        case "dice":
            term = smp.losses.DiceLoss(mode, ignore_index=ignore_index, **params)
        case "focal":
            # Binary mode for multilabel too: smp 0.6's multilabel focal loss indexes each class plane
            # with the (N, K, H, W) ignore mask and fails; binary mode takes every plane's pixels at once.
            term = smp.losses.FocalLoss(smp.losses.BINARY_MODE, ignore_index=ignore_index, **params)
        case "lovasz":  # the Lovasz hinge
            term = smp.losses.LovaszLoss(mode, ignore_index=ignore_index, **params)
        case "tversky":
            term = smp.losses.TverskyLoss(mode, ignore_index=ignore_index, **params)
        case _ if name in TERMS:
            raise ConfigError(
                f"loss.terms.{name} has no {mode} form (data.mode={mode}); choose among {', '.join(SIGMOID_TERMS)} "
                "(loss=ce, ce_dice, dice, focal, lovasz, tversky or focal_tversky)."
            )
        case _:
            raise ConfigError(f"unknown loss term '{name}' in loss.terms; valid terms: {', '.join(SIGMOID_TERMS)}.")
    return SigmoidTerm(term)


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


def _weight_and_params(name: str, spec: Any) -> tuple[float, dict[str, Any]]:
    if isinstance(spec, Mapping):
        params = dict(spec)
        return float(params.pop("weight", 1.0)), params
    try:
        return float(spec), {}
    except (TypeError, ValueError):
        raise ConfigError(
            f"loss.terms.{name}={spec!r}: give a weight (1.0) or a mapping such as {{weight: 1.0, gamma: 2.0}}."
        ) from None


def build_loss(
    cfg: Mapping,
    num_classes: int,
    ignore_index: int,
    class_weights: Sequence[float] | None = None,
    mode: str = MULTICLASS,
) -> CompoundLoss:
    """Builds the ``loss`` config group.

    Args:
        cfg: ``terms`` (name -> weight, or name -> {weight, term arguments}).
        num_classes: number of classes, to check ``class_weights`` against.
        ignore_index: target value every term ignores.
        class_weights: per-class weights for the terms that take them, or None.
        mode: ``data.mode``: multiclass (softmax), or binary and multilabel (a sigmoid per channel,
            the terms' binary forms; class weights are refused there).
    """
    terms = dict(cfg.get("terms") or {})
    if not terms:
        raise ConfigError(f"loss.terms is empty; give at least one of {', '.join(TERMS)} with a weight.")
    if mode != MULTICLASS and class_weights is not None:
        raise ConfigError(
            f"loss.class_weights is not used with data.mode={mode} (a sigmoid per class): set "
            "loss.class_weights=null, or pick a loss without them (loss=ce_dice; data=folder's default is wce)."
        )
    if class_weights is not None and len(class_weights) != num_classes:
        raise ConfigError(f"loss.class_weights has {len(class_weights)} values but data.num_classes={num_classes}.")
    modules, weights = {}, {}
    for name, spec in terms.items():
        weights[name], params = _weight_and_params(name, spec)
        try:
            if mode == MULTICLASS:
                modules[name] = build_term(name, ignore_index, class_weights, **params)
            else:
                modules[name] = build_sigmoid_term(name, ignore_index, mode, **params)
        except TypeError as error:  # an argument the term does not take
            raise ConfigError(f"loss.terms.{name}: {error}") from error
    return CompoundLoss(modules, weights)
