"""Segmentation scores from one confusion matrix: per-class IoU and Dice, their means, pixel accuracy.

torchmetrics accumulates the confusion matrix (on the device, synchronised across DDP ranks); the
scores are derived here, by hand, because torchmetrics' own IoU/Dice differ from the contract on
``ignore_index`` and on classes absent from the whole evaluated set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


def confusion_matrix_metric(num_classes: int, ignore_index: int) -> MulticlassConfusionMatrix:
    """Pixel confusion matrix (rows: target, columns: prediction) that skips ``ignore_index``."""
    # validate_args=False: the check calls torch.unique on every batch, a host-device sync; the
    # data set already guarantees that targets are classes or ignore_index.
    return MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)


def scores_from_confusion(
    confusion: torch.Tensor, class_names: Sequence[str], ignore_index: int | None = None
) -> dict[str, float]:
    """Contract scores from a confusion matrix.

    Args:
        confusion: (C, C) pixel counts, rows target, columns prediction.
        class_names: C names, for the per-class keys.
        ignore_index: a class index to leave out of the means (if it is one of the classes).

    Returns:
        ``miou``, ``dice``, ``pixel_acc``, ``iou/<name>`` and ``dice/<name>``. A class absent from
        both target and prediction has NaN IoU/Dice and is left out of the means.
    """
    confusion = confusion.double()
    tp = confusion.diag()
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    nan = torch.tensor(float("nan"), dtype=confusion.dtype, device=confusion.device)
    present = (tp + fp + fn) > 0
    iou = torch.where(present, tp / (tp + fp + fn).clamp(min=1), nan)
    dice = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp(min=1), nan)
    counted = torch.ones_like(present)
    if ignore_index is not None and 0 <= ignore_index < len(class_names):
        counted[ignore_index] = False
    total = confusion.sum()
    scores = {
        "miou": iou[counted].nanmean().item(),
        "dice": dice[counted].nanmean().item(),
        "pixel_acc": (tp.sum() / total).item() if total > 0 else math.nan,
    }
    for index, name in enumerate(class_names):
        if counted[index]:
            scores[f"iou/{name}"] = iou[index].item()
            scores[f"dice/{name}"] = dice[index].item()
    return scores
