"""Mask colours and the run folder's pictures: a palette whose classes stand out from the black
background and from each other (Pascal VOC's still there to ask for), ignored pixels in white,
images shown as they were read, and pictures that say what they show, name the classes and use
no tiny text."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from semseg.data.palette import IGNORE_COLOUR, class_palette, colorize, pascal_voc_palette, to_display
from semseg.reporting.captions import example_names, picture_title
from semseg.reporting.run_pictures import Classes, confusion_matrix, overlay_grid, per_class_iou, training_curves
from semseg.run_folder import checkpoint_epoch
from tests.figures import assert_readable, legend_labels

NAMES = ["background", "disk", "square", "triangle", "speck"]


def test_pascal_vocs_palette_is_still_there_and_distinct():
    palette = pascal_voc_palette(21)
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[15].tolist() == [192, 128, 128]  # VOC's "person"
    assert len({tuple(c) for c in palette.tolist()}) == 21


def test_default_palette_sets_every_class_apart_from_black_white_and_each_other():
    palette = class_palette(20).astype(float)
    assert palette[0].tolist() == [0, 0, 0]  # the background stays black
    colours = [*palette[1:], np.asarray(IGNORE_COLOUR, float)]  # and no class looks ignored
    assert min(np.linalg.norm(c) for c in palette[1:]) >= 150  # VOC's navy speck was 128 from black
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations([palette[0], *colours], 2)) >= 60
    # Adding classes keeps the colours of the first ones, so pictures of related runs agree.
    assert np.array_equal(class_palette(5), class_palette(20)[:5])
    assert len({tuple(c) for c in class_palette(300).tolist()}) == 300


def test_colorize_paints_classes_and_ignored_pixels():
    mask = np.array([[0, 1], [2, 255]])
    rgb = colorize(mask, np.array([[0, 0, 0], [10, 20, 30], [40, 50, 60]], np.uint8), ignore_index=255)
    assert rgb[0, 1].tolist() == [10, 20, 30] and rgb[1, 0].tolist() == [40, 50, 60]
    assert tuple(rgb[1, 1]) == IGNORE_COLOUR


def test_to_display_undoes_the_normalisation():
    image = np.random.default_rng(0).integers(0, 256, (1, 4, 5)).astype(np.uint8)
    normalised = (image / 255.0 - 0.5) / 0.2
    shown = to_display(normalised, [0.5], [0.2])
    assert shown.shape == (4, 5, 3) and np.array_equal(shown[..., 1], image[0])


def test_a_picture_title_says_split_epoch_and_checkpoint():
    assert picture_title("val", 12, "best.ckpt") == "val, epoch 12, best.ckpt"
    assert picture_title("val", 30, last=True) == "val, epoch 30 (last)"
    assert picture_title("val", None, "best.ckpt") == "val, best.ckpt"


def test_the_example_images_are_a_seeded_choice_whatever_order_the_names_come_in():
    names = [f"img{i:02d}" for i in range(20)]
    chosen = example_names(reversed(names), 5, seed=3)
    assert chosen == example_names(names, 5, seed=3) == sorted(set(chosen)) and len(chosen) == 5
    assert example_names(names, 5, seed=4) != chosen
    assert example_names(names, 50, seed=3) == names  # all of them when there are fewer


def test_checkpoint_epoch_reads_the_epoch_and_none_when_unreadable(tmp_path):
    torch.save({"epoch": 12, "state_dict": {"w": torch.zeros(3)}}, tmp_path / "best.ckpt")
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    assert checkpoint_epoch(tmp_path / "best.ckpt") == 13  # Lightning's counter starts at 0, people's at 1
    assert checkpoint_epoch(tmp_path / "broken.ckpt") is None and checkpoint_epoch(tmp_path / "none.ckpt") is None


@pytest.fixture
def classes() -> Classes:
    return Classes(NAMES, class_palette(len(NAMES)), ignore_index=255)


def test_overlay_grid_names_the_classes_beside_the_images(classes):
    mask = np.array([[0, 1], [4, 255]])
    shown = [SimpleNamespace(name=f"val_{i}", image=np.zeros((2, 2, 3), np.uint8), mask=mask, prediction=mask * 0,
                             miou=0.5) for i in range(2)]  # fmt: skip
    fig = overlay_grid(shown, classes, "val, epoch 12, best.ckpt: fixed examples")
    assert_readable(fig, "val, epoch 12, best.ckpt: fixed examples", [*NAMES, "ignored"])
    assert fig.get_size_inches()[1] == pytest.approx(2.2 * 2)  # 2.2 inches a row, the legend beside
    legend = fig.legends[0].get_window_extent()
    assert all(legend.x0 >= ax.get_window_extent().x1 for ax in fig.axes)  # it covers no image


def test_confusion_matrix_has_readable_values_and_the_class_legend(classes):
    confusion = torch.tensor(np.diag([50, 40, 30, 20, 10]) + 1)
    fig = confusion_matrix(confusion, classes, "val, epoch 3: confusion matrix")
    assert_readable(fig, "val, epoch 3: confusion matrix", NAMES)


def test_per_class_iou_labels_each_bar_and_draws_the_miou_line(classes):
    metrics = {"val/iou/background": 0.95, "val/iou/disk": 0.5, "val/iou/square": 0.25, "val/iou/triangle": 0.1,
               "val/miou": 0.45}  # speck: absent, no score  # fmt: skip
    fig = per_class_iou(metrics, classes, "val, epoch 29 (last): per-class IoU")
    assert_readable(fig, "val, epoch 29 (last): per-class IoU", NAMES)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts[:5]] == ["0.95", "0.50", "0.25", "0.10", "n/a"]  # bar by bar
    line = next(line for line in ax.get_lines() if line.get_label().startswith("mIoU"))
    assert line.get_ydata()[0] == pytest.approx(0.45) and line.get_label() == "mIoU 0.450"
    assert any(t.get_text() == "mIoU\n0.450" for t in ax.texts)


def test_training_curves_show_the_learning_rate_and_the_checkpoint_epoch():
    history = [{"epoch": e, "train/loss": 1 / (e + 1), "val/loss": 1.2 / (e + 1), "val/miou": e / 10} for e in range(4)]
    rates = [(step, 1e-3 * (1 - step / 40)) for step in range(0, 40, 10)]
    fig = training_curves(history, rates, ("best.ckpt", 2))
    assert_readable(fig, "train and val, epochs 0–3; best.ckpt is epoch 2")
    lr_axis = next(ax for ax in fig.axes if ax.get_ylabel() == "learning rate")
    assert lr_axis.get_lines()[0].get_ydata().tolist() == [r for _, r in rates]
    assert {"train/loss", "val/loss", "val/miou", "best.ckpt"} <= set(legend_labels(fig))


def test_training_curves_say_when_no_learning_rate_was_recorded():
    fig = training_curves([{"epoch": 1, "val/miou": 0.3}], [])
    lr_axis = next(ax for ax in fig.axes if ax.get_ylabel() == "learning rate")
    assert [t.get_text() for t in lr_axis.texts] == ["no learning rate recorded"] and not lr_axis.get_lines()
    assert_readable(fig, "train and val, epochs 1–1")
