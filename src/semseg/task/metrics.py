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
        valid = target != self.ignore_index
        target = torch.where(valid, target, 0)  # any class: these pixels are masked out below
        target_band = boundary_band(target, valid, self.width)
        pred_band = boundary_band(preds, valid, self.width)
        both = target_band & pred_band & (preds == target)
        # scatter_add with 0/1 weights instead of boolean indexing: no host-device sync.
        zeros = torch.zeros_like(self.intersection)
        intersection = zeros.scatter_add(0, target.flatten(), both.flatten().long())
        in_target = zeros.scatter_add(0, target.flatten(), target_band.flatten().long())
        in_pred = zeros.scatter_add(0, preds.flatten(), pred_band.flatten().long())
        self.intersection += intersection
        self.union += in_target + in_pred - intersection

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
    confusion = confusion.double()
    per_class = per_class_scores(confusion)
    iou, dice = per_class["iou"], per_class["dice"]
    counted = torch.ones_like(iou, dtype=torch.bool)
    if ignore_index is not None and 0 <= ignore_index < len(class_names):
        counted[ignore_index] = False
    total = confusion.sum()
    scores = {
        "miou": iou[counted].nanmean().item(),
        "dice": dice[counted].nanmean().item(),
        "pixel_acc": (confusion.diag().sum() / total).item() if total > 0 else math.nan,
    }
    if boundary_iou is not None:
        scores["boundary_iou"] = boundary_iou.double()[counted].nanmean().item()
    for index, name in enumerate(class_names):
        if counted[index]:
            scores[f"iou/{name}"] = iou[index].item()
            scores[f"dice/{name}"] = dice[index].item()
    return scores


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
        valid = target != self.ignore_index
        plane = torch.arange(self.num_classes, device=preds.device).view(1, -1, 1, 1)
        index = plane * 4 + target.clamp(0, 1) * 2 + preds.long()
        # scatter_add with 0/1 weights instead of boolean indexing: no host-device sync.
        counts = torch.zeros(self.num_classes * 4, dtype=torch.long, device=preds.device)
        counts.scatter_add_(0, index.flatten(), valid.flatten().long())
        self.confusion += counts.view(self.num_classes, 2, 2)

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
    per_class = {name: values[:, 1] for name, values in per_class_scores(confusion).items()}
    total = confusion.sum()
    right = confusion.diagonal(dim1=-2, dim2=-1).sum()
    scores = {
        "miou": per_class["iou"].nanmean().item(),
        "dice": per_class["dice"].nanmean().item(),
        "pixel_acc": (right.double() / total).item() if total > 0 else math.nan,
    }
    if boundary_iou is not None:
        scores["boundary_iou"] = boundary_iou.double()[1::2].nanmean().item()
    for index, name in enumerate(class_names):
        for score in ("iou", "dice", "precision", "recall"):
            scores[f"{score}/{name}"] = per_class[score][index].item()
    return scores


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
