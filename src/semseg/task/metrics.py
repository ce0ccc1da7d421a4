"""Segmentation scores: per-class IoU and Dice, their means, pixel accuracy, and boundary IoU.

torchmetrics accumulates the confusion matrix (on the device, synchronised across DDP ranks); the
scores are derived from it here, in one place (``per_class_scores``) for every reader: the logged
metrics, eval.py's per-class table and the pictures' per-image mIoU. They are derived by hand
because torchmetrics' own IoU/Dice differ from the contract on ``ignore_index`` and on classes
absent from the whole evaluated set. torchmetrics has no boundary IoU, so that metric is written
here as a torchmetrics ``Metric`` (same accumulation and sync).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix


def confusion_matrix_metric(num_classes: int, ignore_index: int) -> MulticlassConfusionMatrix:
    """Pixel confusion matrix (rows: target, columns: prediction) that skips ``ignore_index``."""
    # validate_args=False: the check calls torch.unique on every batch, a host-device sync; the
    # data set already guarantees that targets are classes or ignore_index.
    return MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)


def boundary_band(labels: torch.Tensor, valid: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels that have a pixel of another class within ``width`` (chessboard distance).

    For each class this is the inner band of its region along its contour: Boundary IoU's
    ``G_d ∩ G``. Invalid (ignored or padded) pixels are transparent, like the outside of the
    image: they neither make nor hold a boundary.

    Args:
        labels: (B, H, W) class indices.
        valid: (B, H, W) bool, the pixels that count.
        width: band width in pixels.
    """
    x = labels[:, None].float()  # max_pool2d has no integer kernels; class indices are exact in float
    kernel = 2 * width + 1
    # max_pool2d pads with -inf, so pixels outside the image never enter a window's max or min.
    highest = F.max_pool2d(torch.where(valid[:, None], x, -1.0), kernel, stride=1, padding=width)
    lowest = -F.max_pool2d(torch.where(valid[:, None], -x, -math.inf), kernel, stride=1, padding=width)
    return (highest != lowest)[:, 0] & valid


def per_image_boundary_counts(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) boundary intersection and union pixel counts of each of N images (``BoundaryIoU``'s
    terms), from (N, H, W) predicted and target class indices."""
    valid = target != ignore_index
    target = torch.where(valid, target, 0)  # any class: these pixels are masked out below
    target_band = boundary_band(target, valid, width)
    pred_band = boundary_band(preds, valid, width)
    both = target_band & pred_band & (preds == target)
    # Image n's class c sits at n * C + c. scatter_add with 0/1 weights instead of boolean
    # indexing: no host-device sync.
    offset = torch.arange(preds.shape[0], device=preds.device)[:, None, None] * num_classes
    zeros = torch.zeros(preds.shape[0] * num_classes, dtype=torch.long, device=preds.device)
    intersection = zeros.scatter_add(0, (offset + target).flatten(), both.flatten().long())
    in_target = zeros.scatter_add(0, (offset + target).flatten(), target_band.flatten().long())
    in_pred = zeros.scatter_add(0, (offset + preds).flatten(), pred_band.flatten().long())
    shape = (preds.shape[0], num_classes)
    return intersection.view(shape), (in_target + in_pred - intersection).view(shape)


class BoundaryIoU(Metric):
    """Boundary IoU (Cheng et al., CVPR 2021) per class, accumulated over the evaluated set.

    Per class c, with G and P the target and predicted regions of c and ``_d`` their inner bands
    of ``width`` pixels: ``|G_d ∩ P_d| / |G_d ∪ P_d|``. Region IoU barely moves when edges are
    blurred on large objects; this score is made of edge pixels only, so it measures boundary
    quality (FCN-32s vs FCN-8s). Counts are summed over batches (and DDP ranks) before dividing.

    Args:
        num_classes: number of classes.
        ignore_index: target value of pixels left out.
        width: band width in pixels (Cheng et al. use 2% of the image diagonal: 3 px at 100x100);
            no default here: ``metrics.boundary_width`` in conf/train.yaml is the one source.
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int, width: int):
        super().__init__()
        self.num_classes, self.ignore_index, self.width = num_classes, ignore_index, width
        self.add_state("intersection", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch of (B, H, W) predicted and target class indices."""
        intersection, union = per_image_boundary_counts(preds, target, self.num_classes, self.ignore_index, self.width)
        self.intersection += intersection.sum(0)
        self.union += union.sum(0)

    def compute(self) -> torch.Tensor:
        """Per-class boundary IoU; NaN for a class with no boundary pixel in target or prediction."""
        nan = torch.tensor(math.nan, device=self.union.device)
        return torch.where(self.union > 0, self.intersection / self.union.clamp(min=1), nan)


def per_image_confusion(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(N, C, C) pixel confusion matrix of each of N images (rows target, columns prediction), from
    (N, H, W) predicted and target class indices; pixels whose target is ``ignore_index`` are skipped."""
    valid = target != ignore_index
    n = preds.shape[0]
    # One bincount for the whole batch: image i's counts sit at i * C² + target * C + prediction.
    index = torch.arange(n, device=preds.device)[:, None, None] * num_classes**2 + target * num_classes + preds
    return torch.bincount(index[valid], minlength=n * num_classes**2).reshape(n, num_classes, num_classes)


def per_class_scores(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class ``iou``, ``dice``, ``precision`` and ``recall`` (float64) from a (C, C) confusion
    matrix, or a batch of them (N, C, C): rows target, columns prediction.

    Each score is NaN where its denominator has no pixel: IoU and Dice for a class absent from both
    target and prediction, precision for a class never predicted, recall for one never in the target.
    """
    confusion = confusion.double()
    tp = confusion.diagonal(dim1=-2, dim2=-1)
    target, predicted = confusion.sum(-1), confusion.sum(-2)
    nan = torch.tensor(math.nan, dtype=confusion.dtype, device=confusion.device)

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), nan)

    return {
        "iou": ratio(tp, target + predicted - tp),
        "dice": ratio(2 * tp, target + predicted),
        "precision": ratio(tp, predicted),
        "recall": ratio(tp, target),
    }


def per_image_miou(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(N,) mean IoU of each of N images over the classes present in its target or prediction.

    Unlike ``scores_from_confusion``'s means, an ``ignore_index`` that is a class index stays in the
    mean: its pixels are skipped in the target, but a prediction of it still counts as a mistake.
    """
    return per_class_scores(per_image_confusion(preds, target, num_classes, ignore_index))["iou"].nanmean(dim=-1)


def batch_scores(
    confusion: torch.Tensor,
    mode: str = "multiclass",
    ignore_index: int | None = None,
    boundary_iou: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The contract's scores of a batch of confusion matrices (float64 tensors over its leading
    dimensions): the means and the per-class scores. One place for every reader: the logged metrics
    (``scores_from_confusion``, ``scores_from_presence``) and the report's resamples.

    Args:
        confusion: (..., C, C) pixel counts, rows target, columns prediction (``multiclass``), or
            (..., K, 2, 2) presence counts (``binary``, ``multilabel``: ``PresenceConfusion``'s).
        mode: ``data.mode``.
        ignore_index: multiclass: a class index left out of the means (if it is one of the classes).
        boundary_iou: optional (..., C) per-class boundary IoU (multiclass; ``BoundaryIoU``'s), or
            (..., 2K) over ``boundary_planes`` (binary, multilabel: the odd entries count).

    Returns:
        ``({"miou", "dice", "pixel_acc"[, "boundary_iou"]}, per_class)``, ``per_class`` of (..., C)
        scores of the classes that count: ``iou`` and ``dice`` (multiclass), also ``precision`` and
        ``recall`` (binary, multilabel; the foreground's). A class absent from both target and
        prediction has NaN scores and is left out of the means.
    """
    confusion = confusion.double()
    if mode == "multiclass":
        per_class = per_class_scores(confusion)
        counted = torch.ones(confusion.shape[-1], dtype=torch.bool, device=confusion.device)
        if ignore_index is not None and 0 <= ignore_index < len(counted):
            counted[ignore_index] = False
        per_class = {key: per_class[key][..., counted] for key in ("iou", "dice")}
        right, total = confusion.diagonal(dim1=-2, dim2=-1).sum(-1), confusion.sum((-2, -1))
        boundary = None if boundary_iou is None else boundary_iou.double()[..., counted]
    else:  # each class a yes/no: its foreground's scores
        per_class = {key: values[..., 1] for key, values in per_class_scores(confusion).items()}
        right, total = confusion.diagonal(dim1=-2, dim2=-1).sum((-2, -1)), confusion.sum((-3, -2, -1))
        boundary = None if boundary_iou is None else boundary_iou.double()[..., 1::2]
    means = {
        "miou": per_class["iou"].nanmean(-1),
        "dice": per_class["dice"].nanmean(-1),
        "pixel_acc": torch.where(total > 0, right / total.clamp(min=1), math.nan),
    }
    if boundary is not None:
        means["boundary_iou"] = boundary.nanmean(-1)
    return means, per_class


def _named_scores(
    means: dict[str, torch.Tensor], per_class: dict[str, torch.Tensor], class_names: Sequence[str]
) -> dict[str, float]:
    scores = {key: value.item() for key, value in means.items()}
    for score, values in per_class.items():
        scores |= {f"{score}/{name}": value for name, value in zip(class_names, values.tolist(), strict=True)}
    return scores


def counted_class_names(class_names: Sequence[str], ignore_index: int | None) -> list[str]:
    """The names of the classes a multiclass task's means count: ``ignore_index`` left out."""
    return [name for index, name in enumerate(class_names) if index != ignore_index]


def scores_from_confusion(
    confusion: torch.Tensor,
    class_names: Sequence[str],
    ignore_index: int | None = None,
    boundary_iou: torch.Tensor | None = None,
) -> dict[str, float]:
    """Contract scores from a confusion matrix.

    Args:
        confusion: (C, C) pixel counts, rows target, columns prediction.
        class_names: C names, for the per-class keys.
        ignore_index: a class index to leave out of the means (if it is one of the classes).
        boundary_iou: optional (C,) per-class boundary IoU (``BoundaryIoU.compute()``).

    Returns:
        ``miou``, ``dice``, ``pixel_acc``, ``iou/<name>`` and ``dice/<name>``, and ``boundary_iou``
        (its class mean) when given. A class absent from both target and prediction has NaN scores
        and is left out of the means.
    """
    means, per_class = batch_scores(confusion, "multiclass", ignore_index, boundary_iou)
    return _named_scores(means, per_class, counted_class_names(class_names, ignore_index))


def per_image_presence_confusion(preds: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """(N, K, 2, 2) presence confusion of each of N images (``PresenceConfusion``'s), from (N, K, H, W)
    0/1 predictions and targets (``presence_planes``)."""
    n, k = target.shape[:2]
    valid = target != ignore_index
    cell = torch.arange(n * k, device=preds.device).view(n, k, 1, 1) * 4
    index = cell + target.clamp(0, 1) * 2 + preds.long()
    # scatter_add with 0/1 weights instead of boolean indexing: no host-device sync.
    counts = torch.zeros(n * k * 4, dtype=torch.long, device=preds.device)
    counts.scatter_add_(0, index.flatten(), valid.flatten().long())
    return counts.view(n, k, 2, 2)


class PresenceConfusion(Metric):
    """(K, 2, 2) pixel confusion of each class's presence (rows target absent/present, columns
    prediction), for binary (K = 1) and multilabel tasks, where each class is its own yes/no.

    Args:
        num_classes: K, the sigmoid outputs.
        ignore_index: target value of pixels left out (in any class plane).
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("confusion", torch.zeros(num_classes, 2, 2, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Adds (N, K, H, W) 0/1 predictions and targets (``presence_planes``)."""
        self.confusion += per_image_presence_confusion(preds, target, self.ignore_index).sum(0)

    def compute(self) -> torch.Tensor:
        return self.confusion


def presence_planes(preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) predictions and targets of a binary task's (N, H, W) ones; multilabel's as they are."""
    return (preds[:, None], target[:, None]) if target.dim() == 3 else (preds, target)


def boundary_planes(preds: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Presence planes as class indices for ``BoundaryIoU(2 * K, ignore_index=-1, ...)``: plane k's
    absent pixels are 2k, its present ones 2k + 1, each plane an image of its own, so the metric's
    odd entries are the boundary IoU of each class's foreground."""
    preds, target = presence_planes(preds, target)
    plane = torch.arange(target.shape[1], device=target.device).view(1, -1, 1, 1) * 2
    labels = torch.where(target != ignore_index, plane + target.clamp(0, 1), -1)
    return (plane + preds.long()).flatten(0, 1), labels.flatten(0, 1)


def scores_from_presence(
    confusion: torch.Tensor, class_names: Sequence[str], boundary_iou: torch.Tensor | None = None
) -> dict[str, float]:
    """Contract scores of a binary or multilabel task from its (K, 2, 2) ``PresenceConfusion``.

    Returns:
        ``miou`` and ``dice`` (the foreground's in a binary task, the mean over classes in a
        multilabel one), ``pixel_acc`` (the share of right yes/no decisions), ``iou/<name>``,
        ``dice/<name>``, ``precision/<name>``, ``recall/<name>``, and ``boundary_iou`` (the class
        mean of the odd entries of a ``BoundaryIoU`` over ``boundary_planes``) when given.
    """
    means, per_class = batch_scores(confusion, "multilabel", boundary_iou=boundary_iou)
    return _named_scores(means, per_class, class_names)


def per_image_presence_iou(preds: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """(N,) IoU of each image's foreground (binary) or mean of its classes' IoUs (multilabel, over
    the classes present in its target or prediction); pixels whose target is ``ignore_index`` skipped."""
    preds, target = presence_planes(preds, target)
    valid = target != ignore_index
    present, predicted = (target == 1) & valid, (preds == 1) & valid
    intersection = (present & predicted).sum(dim=(-2, -1)).double()
    union = (present | predicted).sum(dim=(-2, -1)).double()
    iou = torch.where(union > 0, intersection / union.clamp(min=1), math.nan)
    return iou.nanmean(dim=-1)
