"""Our IoU / Dice / pixel accuracy against an independent computation (scikit-learn + numpy)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from semseg.inference.evaluate import per_class_rows
from semseg.task.metrics import (
    BoundaryIoU,
    confusion_matrix_metric,
    per_class_scores,
    per_image_confusion,
    per_image_miou,
    scores_from_confusion,
)


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


def test_per_image_confusion_and_scores_are_those_of_each_image_alone():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, (3, 8, 8))
    preds = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 4, target.shape))
    target[rng.random(target.shape) < 0.2] = 255
    target[2][target[2] == 3], preds[2][preds[2] == 3] = 0, 0  # class 3 absent from image 2
    confusion = per_image_confusion(torch.as_tensor(preds), torch.as_tensor(target), 4, 255)
    batched = per_class_scores(confusion)
    for i in range(3):
        keep = target[i] != 255
        alone = confusion_matrix(target[i][keep], preds[i][keep], labels=range(4))
        assert confusion[i].tolist() == alone.tolist()
        for name, scores in per_class_scores(torch.as_tensor(alone)).items():
            assert torch.equal(batched[name][i].isnan(), scores.isnan()), name
            assert torch.equal(batched[name][i].nan_to_num(), scores.nan_to_num()), name
    assert math.isnan(batched["iou"][2, 3])  # absent from both: out of the image's mean
    miou = per_image_miou(torch.as_tensor(preds), torch.as_tensor(target), 4, 255)
    assert miou.tolist() == pytest.approx(batched["iou"].nanmean(dim=1).tolist())


def test_the_logged_scores_and_evals_per_class_table_are_the_same_numbers():
    confusion = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2 neither in target nor predicted
    scores = scores_from_confusion(confusion, ["a", "b", "c"])
    rows = per_class_rows(confusion, ["a", "b", "c"])
    for row in rows[:2]:
        assert row["iou"] == scores[f"iou/{row['class']}"] and row["dice"] == scores[f"dice/{row['class']}"]
    assert rows[0]["precision"] == 5 / 7 and rows[0]["recall"] == 5 / 6
    assert all(math.isnan(rows[2][key]) for key in ("iou", "dice", "precision", "recall"))
    assert (rows[2]["target_pixels"], rows[2]["predicted_pixels"]) == (0, 0)


def reference_boundary_counts(preds, target, num_classes, ignore_index, width):
    """Boundary IoU counts by dilation with OpenCV: a pixel of class c is on c's boundary when a
    counted pixel of another class lies within ``width`` (chessboard distance)."""
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for p, t in zip(preds, target, strict=True):
        valid = t != ignore_index
        for c in range(num_classes):
            bands = []
            for labels in (t, p):
                region = (labels == c) & valid
                others = (labels != c) & valid
                # cv2.dilate treats the outside of the image as absent: edges are not boundaries.
                bands.append(region & (cv2.dilate(others.astype(np.uint8), kernel) > 0))
            inter[c] += np.sum(bands[0] & bands[1])
            union[c] += np.sum(bands[0] | bands[1])
    return inter, union


def random_regions(rng, num_classes, shape):
    """Blocky label maps (so that there are regions with insides, not only edges)."""
    coarse = rng.integers(0, num_classes, (shape[0], shape[1] // 4, shape[2] // 4))
    return coarse.repeat(4, axis=1).repeat(4, axis=2)


@pytest.mark.parametrize("width", [1, 3])
def test_boundary_iou_matches_an_opencv_reference(width):
    rng = np.random.default_rng(width)
    num_classes, ignore = 3, 255
    metric = BoundaryIoU(num_classes, ignore, width)
    all_preds, all_target = [], []
    for _ in range(3):
        target = random_regions(rng, num_classes, (2, 32, 40))
        preds = np.where(rng.random(target.shape) < 0.9, np.roll(target, 2, axis=2), 0)
        target[:, :5, :7] = ignore
        metric.update(torch.as_tensor(preds), torch.as_tensor(target))
        all_preds.append(preds)
        all_target.append(target)
    inter, union = reference_boundary_counts(
        np.concatenate(all_preds), np.concatenate(all_target), num_classes, ignore, width
    )
    assert metric.intersection.tolist() == inter.tolist()
    assert metric.union.tolist() == union.tolist()
    torch.testing.assert_close(metric.compute(), torch.as_tensor(inter / union, dtype=torch.float32))


def test_boundary_iou_punishes_coarse_edges_that_region_iou_forgives():
    # A 48x48 square predicted at 1/8 resolution (FCN-32s-like blocky edges): region IoU stays
    # high, boundary IoU drops.
    target = np.zeros((1, 64, 64), np.int64)
    target[0, 9:57, 9:57] = 1
    coarse = cv2.resize(target[0].astype(np.uint8), (8, 8), interpolation=cv2.INTER_AREA)
    preds = cv2.resize(coarse, (64, 64), interpolation=cv2.INTER_NEAREST)[None].astype(np.int64)
    confusion = confusion_matrix_metric(2, 255)
    boundary = BoundaryIoU(2, 255, width=2)
    for metric in (confusion, boundary):
        metric.update(torch.as_tensor(preds), torch.as_tensor(target))
    scores = scores_from_confusion(confusion.compute(), ["bg", "square"], 255, boundary.compute())
    assert scores["iou/square"] > 0.8
    assert scores["boundary_iou"] < 0.5
    perfect = BoundaryIoU(2, 255, width=2)
    perfect.update(torch.as_tensor(target), torch.as_tensor(target))
    assert perfect.compute().tolist() == [1.0, 1.0]


def test_image_edges_and_ignored_pixels_are_not_boundaries():
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, :, 8:] = 255  # half the image ignored: class 0 meets only the edge and the void
    metric = BoundaryIoU(2, 255, width=2)
    metric.update(torch.zeros_like(target), target)
    assert metric.union.tolist() == [0, 0]
    assert all(math.isnan(v) for v in metric.compute().tolist())
