"""ValidationPictures: per-image mIoU, when the PNGs are redrawn, and what their titles say."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.trainer.states import TrainerFn

from semseg.callbacks import ValidationPictures
from semseg.callbacks.pictures import Shown
from semseg.data.batch import BatchPreparer
from semseg.data.palette import class_palette
from semseg.inference.tiling import InferenceSettings
from semseg.reporting import run_pictures
from semseg.task.metrics import per_image_miou
from tests.figures import assert_readable


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


class PredictionInChannel0(torch.nn.Module):
    """A 'network' whose prediction is written in its input's channel 0 (0 or 1, two classes)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([1 - images[:, 0], images[:, 0]], dim=1)


class ValidationSet:
    def __init__(self, samples: list[dict]):
        self.samples = samples
        self.pairs = [(Path(f"{s['name']}.png"), Path(f"{s['name']}.png")) for s in samples]

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


def test_the_k_worst_images_are_found_across_batches_and_k_0_keeps_none():
    names, correct = ["a", "b", "c", "d"], [0.9, 0.2, 0.5, 1.0]
    masks = torch.zeros(4, 1, 10, dtype=torch.long)
    preds = masks.clone()
    for i, share in enumerate(correct):
        preds[i, 0, round(share * 10) :] = 1  # wrong from there on
    images = torch.zeros(4, 3, 1, 10)
    images[:, 0] = preds.float()
    # The data set's samples are uint8, as the loader gives them; batches reach the callback
    # prepared (float images, int64 masks), as Lightning hands them over.
    samples = [{"image": images[i].byte(), "mask": masks[i].byte(), "name": names[i]} for i in range(4)]
    identity = BatchPreparer([0.0] * 3, [1 / 255] * 3, 255)  # uint8 0/1 -> float 0/1
    module = SimpleNamespace(
        hparams=SimpleNamespace(num_classes=2, ignore_index=255), normalization=([0] * 3, [1 / 255] * 3),
        net=PredictionInChannel0(), inference=InferenceSettings.from_config(None), device=torch.device("cpu"),
        prepare_batch=identity, max_pixel_value=255.0,
    )  # fmt: skip
    trainer = SimpleNamespace(
        is_global_zero=True, sanity_checking=False, precision_plugin=Precision(),
        val_dataloaders=SimpleNamespace(dataset=ValidationSet(samples)),
    )  # fmt: skip
    for k, expected in ((2, ["b", "c"]), (0, [])):
        pictures = ValidationPictures(worst_k=k)
        pictures.chosen = {"c"}  # an example: its pixels are kept; "b" is predicted again at the end
        for batch in (slice(0, 2), slice(2, 4)):
            data = {"mask": masks[batch], "image": images[batch], "name": names[batch]}
            pictures.on_validation_batch_end(trainer, module, {"preds": preds[batch]}, data, 0)
        pictures.gather(trainer, module)
        assert [s.name for s in pictures.worst] == expected
        assert [s.name for s in pictures.examples] == ["c"]
        for shown in pictures.worst:
            i = names.index(shown.name)
            assert np.array_equal(shown.prediction, preds[i].numpy()) and np.array_equal(shown.mask, masks[i].numpy())
            assert shown.miou == pytest.approx((correct[i] + 0) / 2)  # class 0 IoU = the share; class 1 IoU 0


def test_picture_titles_say_which_weights_were_validated(tmp_path: Path):
    fitting = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), current_epoch=12, max_epochs=30,
                              ckpt_path=None)  # fmt: skip
    module = SimpleNamespace(loaded_epoch=None)
    assert ValidationPictures._shown_weights(fitting, module) == ("val, epoch 13", None)  # counted from 1
    fitting.current_epoch = 29
    assert ValidationPictures._shown_weights(fitting, module) == ("val, epoch 30 (last)", None)
    # After fit, the best checkpoint is validated: the trainer's epoch is the last one, not its. The
    # module noted the checkpoint's epoch as it loaded; a module that did not, the file says.
    torch.save({"epoch": 7}, tmp_path / "best.ckpt")
    validating = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.VALIDATING), current_epoch=29, max_epochs=30,
                                 ckpt_path=str(tmp_path / "best.ckpt"))  # fmt: skip
    assert ValidationPictures._shown_weights(validating, module) == ("val, epoch 8, best.ckpt", ("best.ckpt", 8))
    module.loaded_epoch = 5
    assert ValidationPictures._shown_weights(validating, module) == ("val, epoch 5, best.ckpt", ("best.ckpt", 5))


def test_the_learning_rate_is_recorded_as_often_as_it_is_logged():
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.0}])
    trainer = SimpleNamespace(is_global_zero=True, optimizers=[optimizer], log_every_n_steps=2, global_step=0)
    pictures = ValidationPictures()
    for step in (0, 0, 1, 2, 3, 4):  # step 0 twice: two accumulated batches make one optimizer step
        trainer.global_step, optimizer.param_groups[0]["lr"] = step, step / 10
        pictures.on_train_batch_start(trainer, None, None, 0)
    assert pictures.learning_rates == [(0, 0.0), (2, 0.2), (4, 0.4)]


def test_every_png_is_titled_with_what_was_validated_and_names_the_classes(monkeypatch, tmp_path: Path):
    names = ["background", "disk", "speck"]
    hp = SimpleNamespace(class_names=names, palette=class_palette(3).tolist(), ignore_index=255)
    mask = np.array([[0, 1], [2, 255]])
    shown = [Shown(f"val_{i}", np.zeros((2, 2, 3), np.uint8), mask, mask * 0, 0.25) for i in range(2)]
    pictures = ValidationPictures()
    pictures.worst = shown[:1]
    pictures.history = [{"epoch": 0, "val/miou": 0.2}, {"epoch": 1, "val/miou": 0.3}]
    pictures.learning_rates = [(0, 1e-3), (10, 5e-4)]
    drawn = {}
    monkeypatch.setattr(run_pictures, "save_figure", lambda fig, path: drawn.setdefault(path.name, fig))
    metrics = {"val/iou/background": 0.9, "val/iou/disk": 0.3, "val/miou": 0.4}
    title = "val, epoch 1, best.ckpt"
    pictures._draw(tmp_path, shown, hp, torch.eye(3), metrics, title, ("best.ckpt", 1))
    assert_readable(drawn["val_examples.png"], f"{title}: fixed examples", [*names, "ignored"])
    assert_readable(drawn["val_worst.png"], f"{title}: the 1 worst images (lowest per-image mIoU)", names)
    assert_readable(drawn["confusion_matrix.png"], f"{title}: confusion matrix (rows sum to 1)", names)
    assert_readable(drawn["per_class_iou.png"], f"{title}: per-class IoU", names)
    assert_readable(drawn["training_curves.png"], "train and val, epochs 0–1; best.ckpt is epoch 1")
