"""ValidationPictures: per-image mIoU, and when the PNGs are redrawn."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from semseg.callbacks import ValidationPictures, per_image_miou


def test_per_image_miou_counts_only_the_classes_each_image_has_and_skips_ignored_pixels():
    masks = torch.tensor([[[0, 0, 1, 1]], [[2, 2, 2, 255]]])
    preds = torch.tensor([[[0, 1, 1, 1]], [[2, 2, 0, 1]]])
    # image 0: class 0 IoU 1/2, class 1 IoU 2/3; image 1: class 2 IoU 2/3, class 0 IoU 0 (predicted only)
    assert per_image_miou(preds, masks, 3, 255).tolist() == pytest.approx([(1 / 2 + 2 / 3) / 2, (2 / 3 + 0) / 2])


@pytest.mark.parametrize(
    ("fn", "epoch", "expected"),
    [(TrainerFn.FITTING, 0, False), (TrainerFn.FITTING, 9, True), (TrainerFn.FITTING, 29, True),
     (TrainerFn.FITTING, 14, False), (TrainerFn.VALIDATING, 3, True)],
)  # fmt: skip
def test_pngs_are_redrawn_every_n_epochs_at_the_last_epoch_and_for_the_best_checkpoint(fn, epoch, expected):
    trainer = SimpleNamespace(state=SimpleNamespace(fn=fn), current_epoch=epoch, max_epochs=30)
    assert ValidationPictures(png_every_n_epochs=10)._draw_pngs(trainer) is expected


def test_the_k_worst_images_are_kept_across_batches_and_k_0_keeps_none():
    def batch(names: list[str], correct: list[float]) -> tuple[dict, dict]:
        masks = torch.zeros(len(names), 1, 10, dtype=torch.long)
        preds = masks.clone()
        for i, share in enumerate(correct):
            preds[i, 0, round(share * 10) :] = 1  # wrong from there on
        images = torch.zeros(len(names), 3, 1, 10)
        return {"preds": preds}, {"mask": masks, "image": images, "name": names}

    module = SimpleNamespace(hparams=SimpleNamespace(num_classes=2, ignore_index=255), normalization=([0] * 3, [1] * 3))
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False)
    for k, expected in ((2, ["b", "c"]), (0, [])):
        pictures = ValidationPictures(worst_k=k)
        for outputs, data in (batch(["a", "b"], [0.9, 0.2]), batch(["c", "d"], [0.5, 1.0])):
            pictures.on_validation_batch_end(trainer, module, outputs, data, 0)
        assert [s.name for s in pictures.worst] == expected
