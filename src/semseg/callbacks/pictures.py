"""Pictures of each validation epoch: fixed example images, the worst images, the confusion matrix.

``ValidationPictures`` keeps a fixed, seeded set of validation images and the k images with the
lowest per-image mIoU, with their predictions. After each validation epoch it logs them to W&B as
``wandb.Image`` with ``masks={"ground_truth", "prediction"}`` (W&B's interactive mask overlay) and
writes the same pictures as PNG into ``<run>/pictures/`` (any logger, or none), plus the
confusion matrix, the per-class IoU and the training curves (with the learning rate). Each
picture's title (and each W&B caption) says what it shows: "val, epoch 12" while training,
"val, epoch 12, best.ckpt" for the best checkpoint validated after it. Lightning has no callback
for segmentation pictures, hence this one.

TensorBoard and MLflow get the PNGs, each time they are drawn: neither overlays masks itself, so a
picture that names the classes has to be drawn first, by matplotlib (about a second, which is what
``png_every_n_epochs`` spares); TensorBoard as images at the step (``pictures/<name>``; the best
checkpoint's as ``pictures/best/<name>``), MLflow as artifacts (``pictures/epoch_012/``,
``pictures/best/``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from semseg.data.multilabel_masks import BACKGROUND
from semseg.data.palette import colorize_mode, to_display
from semseg.inference.tiling import logits_to_prediction, predict_logits
from semseg.reporting.captions import example_names, picture_title
from semseg.run_folder import RunFolder, checkpoint_epoch
from semseg.task.metrics import per_image_miou, per_image_presence_iou

log = logging.getLogger(__name__)

EXAMPLES, WORST = "val/examples", "val/worst"


@dataclass
class Shown:
    """One validation image with its ground truth, prediction and per-image mIoU."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) class indices, ignore_index where ignored
    prediction: np.ndarray
    miou: float


class ValidationPictures(L.Callback):
    """Logs example, worst-image and confusion-matrix pictures after every validation epoch.

    Args:
        num_images: fixed validation images to show (a seeded choice, the same every epoch).
        worst_k: images with the lowest per-image mIoU to show (of rank 0's share under DDP).
        seed: seed of the choice of fixed images.
        png_every_n_epochs: how often training redraws the PNGs (matplotlib takes about a second);
            the last epoch and the validation of the best checkpoint after training always do.
            W&B gets its pictures every epoch (no drawing needed); TensorBoard and MLflow get
            the PNGs when they are drawn.
    """

    def __init__(self, num_images: int = 8, worst_k: int = 4, seed: int = 0, png_every_n_epochs: int = 10):
        self.num_images, self.worst_k, self.seed = num_images, worst_k, seed
        self.png_every_n_epochs = png_every_n_epochs
        self.chosen: set[str] = set()
        self.examples: list[Shown] = []
        self.worst: list[Shown] = []
        self.history: list[dict[str, float]] = []
        self.learning_rates: list[tuple[int, float]] = []  # (optimizer step, learning rate)
        self._clear_epoch()

    def _clear_epoch(self) -> None:
        # Filled during an epoch with device tensors only, read once at its end (gather): reading a
        # score or copying a picture at each batch would make the host wait for the GPU every batch.
        self._scores: list[torch.Tensor] = []
        self._names: list[str] = []
        self._kept: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.is_global_zero and not trainer.sanity_checking

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # The optimizer's learning rate is a host number, read as often as loggers write train/lr;
        # the logged train/lr is a device tensor, and reading it would wait for the GPU.
        step = trainer.global_step
        if not (trainer.is_global_zero and trainer.optimizers) or step % max(1, trainer.log_every_n_steps):
            return
        if not self.learning_rates or self.learning_rates[-1][0] != step:  # once per step when accumulating
            self.learning_rates.append((step, float(trainer.optimizers[0].param_groups[0]["lr"])))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.examples, self.worst = [], []
        self._clear_epoch()
        if not self.chosen:
            names = [pair[0].stem for pair in trainer.val_dataloaders.dataset.pairs]
            self.chosen = set(example_names(names, self.num_images, self.seed))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active(trainer) or not outputs:
            return
        hp = pl_module.hparams
        preds, masks = outputs["preds"], batch["mask"]
        if getattr(pl_module, "mode", "multiclass") == "multiclass":
            self._scores.append(per_image_miou(preds, masks, hp.num_classes, hp.ignore_index))
        else:  # binary: the foreground's IoU; multilabel: the mean of the classes' IoUs
            self._scores.append(per_image_presence_iou(preds, masks, hp.ignore_index))
        self._names.extend(batch["name"])
        for i, name in enumerate(batch["name"]):
            if name in self.chosen:  # names are host strings: choosing needs no wait
                self._kept[name] = (batch["image"][i].clone(), masks[i].clone(), preds[i].clone())

    def gather(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch's examples and its ``worst_k`` images (lowest per-image mIoU, the first seen
        among equals), from what the batches left on the device: the epoch's one wait for it.

        A worst image that is not an example is predicted again, alone (its pixels were not kept:
        which images are worst is known only now, and keeping every prediction costs memory)."""
        scores = dict(zip(self._names, torch.cat(self._scores).tolist() if self._scores else [], strict=True))
        mean, std = pl_module.normalization

        def shown(name: str, image: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor) -> Shown:
            display = to_display(image.float().cpu().numpy(), mean, std, stretch=pl_module.max_pixel_value > 255)
            return Shown(name, display, mask.cpu().numpy(), prediction.cpu().numpy(), scores[name])

        self.examples = [shown(name, *kept) for name, kept in self._kept.items()]
        ranked = sorted((name for name in scores if not math.isnan(scores[name])), key=scores.__getitem__)
        self.worst = [
            shown(name, *(self._kept.get(name) or self._predict_again(trainer, pl_module, name)))
            for name in ranked[: self.worst_k]
        ]
        self._clear_epoch()

    @staticmethod
    def _predict_again(trainer: L.Trainer, pl_module, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image, mask, prediction) of one validation image, predicted as validation predicts."""
        dataset = trainer.val_dataloaders.dataset
        index = next(i for i, pair in enumerate(dataset.pairs) if pair[0].stem == name)
        sample = dataset[index]
        batch = {"image": sample["image"][None].to(pl_module.device), "mask": sample["mask"][None]}
        batch = pl_module.prepare_batch(batch)
        # The validation's precision; eager, so a compiled network does not compile a new shape.
        with trainer.precision_plugin.forward_context(), torch.compiler.set_stance("force_eager"):
            mode = getattr(pl_module, "mode", "multiclass")
            logits = predict_logits(pl_module.net, batch["image"], pl_module.inference, sigmoid=mode != "multiclass")
        prediction = logits_to_prediction(logits, mode, getattr(pl_module.hparams, "threshold", 0.5))
        return batch["image"][0], batch["mask"][0], prediction[0]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        self.gather(trainer, pl_module)
        hp = pl_module.hparams
        # The confusion matrix picture is multiclass's: a sigmoid task's counts are in per_class_iou.
        multiclass = getattr(pl_module, "mode", "multiclass") == "multiclass"
        confusion = pl_module.last_confusion.get("val") if multiclass else None
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if trainer.state.fn == TrainerFn.FITTING:  # not the re-validation of the best checkpoint after fit
            self.history.append({"epoch": trainer.current_epoch + 1, **metrics})  # from 1, as the console
        examples = sorted(self.examples, key=lambda s: s.name)
        title, checkpoint = self._shown_weights(trainer, pl_module)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, trainer.global_step, examples, hp, confusion, title)
        if self._draw_pngs(trainer):
            folder = RunFolder(trainer.default_root_dir).pictures
            drawn = self._draw(folder, examples, hp, confusion, metrics, title, checkpoint)
            where = f"epoch_{trainer.current_epoch + 1:03d}" if checkpoint is None else Path(checkpoint[0]).stem
            send_pictures(trainer.loggers, drawn, trainer.global_step, where, checkpoint is not None)

    @staticmethod
    def _shown_weights(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[str, tuple[str, int | None] | None]:
        """The pictures' title ("val, epoch 12, best.ckpt") and the (name, epoch) of the checkpoint
        validated: while fitting, the current weights (no checkpoint); otherwise the checkpoint
        validated (the best one, after fit)."""
        if trainer.state.fn == TrainerFn.FITTING or not trainer.ckpt_path:
            epoch = trainer.current_epoch + 1  # counted from 1, as the console and train.log
            return picture_title("val", epoch, last=epoch == trainer.max_epochs), None
        # Validating does not restore the epoch counter: the checkpoint knows its epoch.
        epoch = getattr(pl_module, "loaded_epoch", None) or checkpoint_epoch(trainer.ckpt_path)
        name = Path(trainer.ckpt_path).name
        return picture_title("val", epoch, name), (name, epoch)

    def _draw_pngs(self, trainer: L.Trainer) -> bool:
        if trainer.state.fn != TrainerFn.FITTING or trainer.current_epoch + 1 >= (trainer.max_epochs or 0):
            return True
        return self.png_every_n_epochs > 0 and (trainer.current_epoch + 1) % self.png_every_n_epochs == 0

    def _draw(
        self,
        folder: Path,
        examples: list[Shown],
        hp,
        confusion: torch.Tensor | None,
        metrics: dict,
        title: str,
        checkpoint: tuple[str, int | None] | None,
    ) -> list[Path]:
        """The PNGs, each titled ``title`` (what was validated) and what it shows; returns their paths."""
        from semseg.reporting import run_pictures  # matplotlib is imported only when pictures are drawn

        folder.mkdir(parents=True, exist_ok=True)
        classes = run_pictures.Classes(
            hp.class_names, np.asarray(hp.palette, np.uint8), hp.ignore_index, getattr(hp, "mode", "multiclass")
        )
        drawn: list[Path] = []

        def save(figure, path: Path) -> None:
            run_pictures.save_figure(figure, path)
            drawn.append(path)

        if examples:
            save(run_pictures.overlay_grid(examples, classes, f"{title}: fixed examples"), folder / "val_examples.png")
        if self.worst:
            worst = f"{title}: the {len(self.worst)} worst images (lowest per-image mIoU)"
            save(run_pictures.overlay_grid(self.worst, classes, worst), folder / "val_worst.png")
        if confusion is not None:
            matrix = run_pictures.confusion_matrix(confusion, classes, f"{title}: confusion matrix (rows sum to 1)")
            save(matrix, folder / "confusion_matrix.png")
        save(run_pictures.per_class_iou(metrics, classes, f"{title}: per-class IoU"), folder / "per_class_iou.png")
        curves = run_pictures.training_curves(self.history, self.learning_rates, checkpoint)
        save(curves, folder / "training_curves.png")
        return drawn

    def _log_wandb(self, logger: WandbLogger, step: int, examples: list[Shown], hp, confusion, title: str) -> None:
        """One W&B history row: examples and worst images with their masks (W&B's overlay names the
        classes: its legend), captioned with ``title``, and the confusion matrix."""
        import wandb
        from wandb.plot.custom_chart import plot_table

        mode = getattr(hp, "mode", "multiclass")
        labels = dict(enumerate([BACKGROUND, *hp.class_names] if mode == "binary" else hp.class_names))
        if 0 <= hp.ignore_index < 65536 and hp.ignore_index not in labels:
            labels[hp.ignore_index] = "ignored"

        def image(s: Shown) -> wandb.Image:
            if mode == "multilabel":  # W&B's mask overlay is one class a pixel: the blended colours instead
                palette = np.asarray(hp.palette, np.uint8)
                pictures = [s.image, colorize_mode(s.mask, palette, mode), colorize_mode(s.prediction, palette, mode)]
                return wandb.Image(np.concatenate(pictures, axis=1), caption=f"{s.name} mIoU {s.miou:.3f}; {title}")
            masks = {
                "ground_truth": {"mask_data": s.mask.astype(np.int32), "class_labels": labels},
                "prediction": {"mask_data": s.prediction.astype(np.int32), "class_labels": labels},
            }
            return wandb.Image(s.image, masks=masks, caption=f"{s.name} mIoU {s.miou:.3f}; {title}")

        row = {key: [image(s) for s in shown] for key, shown in ((EXAMPLES, examples), (WORST, self.worst)) if shown}
        if confusion is not None:
            # W&B's interactive confusion matrix, built from our counts: wandb.plot.confusion_matrix
            # itself wants one (true, predicted) entry per pixel.
            names, counts = hp.class_names, confusion.tolist()
            data = [[names[i], names[j], counts[i][j]] for i in range(len(names)) for j in range(len(names))]
            table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=data)
            fields = {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
            row["val/confusion_matrix"] = plot_table(
                "wandb/confusion_matrix/v1", table, fields, {"title": f"{title}: confusion matrix"}
            )
        logger.experiment.log({**row, "trainer/global_step": step})


def send_pictures(loggers: list[Logger], paths: list[Path], step: int, where: str, after_fit: bool) -> None:
    """The PNGs just drawn, to the loggers that keep pictures and cannot draw W&B's overlays.

    TensorBoard: an image per picture at ``step``, ``pictures/<name>`` while training (a slider over
    the epochs drawn) and ``pictures/<where>/<name>`` for a checkpoint validated after it (the
    best), which shares the last epoch's step. MLflow: artifacts under ``pictures/<where>/``
    (``epoch_012``, ``best``), so each drawing stays; uploaded when the store is a server.
    """
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            for path in paths:
                tag = f"pictures/{where}/{path.stem}" if after_fit else f"pictures/{path.stem}"
                picture = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                logger.experiment.add_image(tag, picture, step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            for path in paths:
                logger.experiment.log_artifact(logger.run_id, str(path), f"pictures/{where}")
