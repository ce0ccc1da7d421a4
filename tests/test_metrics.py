"""Our IoU / Dice / pixel accuracy against an independent computation (scikit-learn + numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from semseg.metrics import confusion_matrix_metric, scores_from_confusion


def reference_scores(preds: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None) -> dict:
    """Per-class IoU/Dice straight from their set definitions, over non-ignored pixels."""
    keep = target != ignore_index if ignore_index is not None else np.ones_like(target, bool)
    p, t = preds[keep], target[keep]
    cm = confusion_matrix(t, p, labels=list(range(num_classes)))
    out = {"pixel_acc": float((p == t).mean())}
    ious, dices = [], []
    for c in range(num_classes):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        size = np.sum(p == c) + np.sum(t == c)
        assert cm[c, c] == inter
        iou = inter / union if union else math.nan
        dice = 2 * inter / size if size else math.nan
        out[f"iou/c{c}"], out[f"dice/c{c}"] = iou, dice
        if c != ignore_index:
            ious.append(iou)
            dices.append(dice)
    out["miou"] = float(np.nanmean(ious))
    out["dice"] = float(np.nanmean(dices))
    return out


def our_scores(batches, num_classes: int, ignore_index: int | None) -> dict:
    metric = confusion_matrix_metric(num_classes, ignore_index if ignore_index is not None else 255)
    for preds, target in batches:  # accumulated over several batches, as in an epoch
        metric.update(torch.as_tensor(preds), torch.as_tensor(target))
    return scores_from_confusion(metric.compute(), [f"c{c}" for c in range(num_classes)], ignore_index)


@pytest.mark.parametrize(
    ("num_classes", "ignore_index", "absent_class"),
    [
        (4, None, None),
        (4, 255, None),  # the usual void label
        (4, 255, 2),  # a class absent from both target and prediction in the whole set
        (3, 3, None),  # ignore_index == num_classes: a known torchmetrics pitfall
        (5, 0, None),  # ignore_index is one of the classes: left out of the means
    ],
)
def test_scores_match_reference(num_classes: int, ignore_index: int | None, absent_class: int | None):
    rng = np.random.default_rng(num_classes)
    batches = []
    for _ in range(3):
        target = rng.integers(0, num_classes, (2, 16, 16))
        preds = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, num_classes, target.shape))
        if ignore_index is not None:
            target[rng.random(target.shape) < 0.2] = ignore_index
        if absent_class is not None:
            target[target == absent_class] = 0
            preds[preds == absent_class] = 1
        batches.append((preds, target))
    ours = our_scores(batches, num_classes, ignore_index)
    preds = np.concatenate([b[0] for b in batches]).ravel()
    target = np.concatenate([b[1] for b in batches]).ravel()
    ref = reference_scores(preds, target, num_classes, ignore_index)

    for key in ("miou", "dice", "pixel_acc"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key
    for c in range(num_classes):
        if c == ignore_index:
            assert f"iou/c{c}" not in ours  # the ignored class has no score of its own
        elif c == absent_class:
            assert math.isnan(ours[f"iou/c{c}"]) and math.isnan(ours[f"dice/c{c}"])
        else:
            assert ours[f"iou/c{c}"] == pytest.approx(ref[f"iou/c{c}"], abs=1e-9)
            assert ours[f"dice/c{c}"] == pytest.approx(ref[f"dice/c{c}"], abs=1e-9)


def test_pixel_accuracy_hides_a_missed_small_class():
    # The book's lesson in numbers: predicting background everywhere scores 99% pixel accuracy.
    target = np.zeros((1, 10, 10), int)
    target[0, 0, 0] = 1
    scores = our_scores([(np.zeros_like(target), target)], 2, None)
    assert scores["pixel_acc"] == pytest.approx(0.99)
    assert scores["iou/c1"] == 0.0
    assert scores["miou"] == pytest.approx(0.99 / 2)
