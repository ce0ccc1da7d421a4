"""Pictures of each validation epoch: fixed example images, the worst images, the confusion matrix.

``ValidationPictures`` keeps a fixed, seeded set of validation images and the k images with the
lowest per-image mIoU, with their predictions. After each validation epoch it logs them to W&B as
``wandb.Image`` with ``masks={"ground_truth", "prediction"}`` (W&B's interactive mask overlay) and
writes the same pictures as PNG into ``<run>/pictures/`` (any logger, or none), plus the
confusion matrix, the per-class IoU and the training curves. Lightning has no callback for
segmentation pictures, hence this one.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from semseg.inference import predict_logits
from semseg.visualize import to_display

EXAMPLES, WORST = "val/examples", "val/worst"


@dataclass
class Shown:
    """One validation image with its ground truth, prediction and per-image mIoU."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) class indices, ignore_index where ignored
    prediction: np.ndarray
    miou: float


def per_image_miou(preds: torch.Tensor, masks: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(N,) mean IoU of each image over the classes present in its target or prediction."""
    valid = masks != ignore_index
    n = preds.shape[0]
    index = torch.arange(n, device=preds.device)[:, None, None] * num_classes**2 + masks * num_classes + preds
    counts = torch.bincount(index[valid], minlength=n * num_classes**2).reshape(n, num_classes, num_classes)
    tp = counts.diagonal(dim1=1, dim2=2).double()
    union = counts.sum(1) + counts.sum(2) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
    return iou.nanmean(dim=1)


class ValidationPictures(L.Callback):
    """Logs example, worst-image and confusion-matrix pictures after every validation epoch.

    Args:
        num_images: fixed validation images to show (a seeded choice, the same every epoch).
        worst_k: images with the lowest per-image mIoU to show (of rank 0's share under DDP).
        seed: seed of the choice of fixed images.
        png_every_n_epochs: how often training redraws the PNGs (matplotlib takes about a second);
            the last epoch and the validation of the best checkpoint after training always do.
            W&B gets its pictures every epoch (no drawing needed).
    """

    def __init__(self, num_images: int = 8, worst_k: int = 4, seed: int = 0, png_every_n_epochs: int = 10):
        self.num_images, self.worst_k, self.seed = num_images, worst_k, seed
        self.png_every_n_epochs = png_every_n_epochs
        self.chosen: set[str] = set()
        self.examples: list[Shown] = []
        self.worst: list[Shown] = []
        self.history: list[dict[str, float]] = []
        self._clear_epoch()

    def _clear_epoch(self) -> None:
        # Filled during an epoch with device tensors only, read once at its end (gather): reading a
        # score or copying a picture at each batch would make the host wait for the GPU every batch.
        self._scores: list[torch.Tensor] = []
        self._names: list[str] = []
        self._kept: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.is_global_zero and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.examples, self.worst = [], []
        self._clear_epoch()
        if not self.chosen:
            names = sorted(pair[0].stem for pair in trainer.val_dataloaders.dataset.pairs)
            rng = np.random.default_rng(self.seed)
            self.chosen = {names[i] for i in rng.choice(len(names), min(self.num_images, len(names)), replace=False)}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active(trainer) or not outputs:
            return
        hp = pl_module.hparams
        preds, masks = outputs["preds"], batch["mask"]
        self._scores.append(per_image_miou(preds, masks, hp.num_classes, hp.ignore_index))
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
            display = to_display(image.float().cpu().numpy(), mean, std)
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
            logits = predict_logits(pl_module.net, batch["image"], pl_module.inference)
        return batch["image"][0], batch["mask"][0], logits[0].argmax(dim=0)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        self.gather(trainer, pl_module)
        hp = pl_module.hparams
        confusion = pl_module.last_confusion.get("val")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if trainer.state.fn == TrainerFn.FITTING:  # not the re-validation of the best checkpoint after fit
            self.history.append({"epoch": trainer.current_epoch, **metrics})
        examples = sorted(self.examples, key=lambda s: s.name)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, trainer.global_step, examples, hp, confusion)
        if self._draw_pngs(trainer):
            self._draw(Path(trainer.default_root_dir) / "pictures", examples, hp, confusion, metrics)

    def _draw_pngs(self, trainer: L.Trainer) -> bool:
        if trainer.state.fn != TrainerFn.FITTING or trainer.current_epoch + 1 >= (trainer.max_epochs or 0):
            return True
        return self.png_every_n_epochs > 0 and (trainer.current_epoch + 1) % self.png_every_n_epochs == 0

    def _draw(self, folder: Path, examples: list[Shown], hp, confusion: torch.Tensor | None, metrics: dict) -> None:
        from semseg import run_pictures  # matplotlib is imported only when pictures are drawn

        folder.mkdir(parents=True, exist_ok=True)
        palette = np.asarray(hp.palette, np.uint8)
        run_pictures.overlay_grid(examples, palette, hp.ignore_index, folder / "val_examples.png")
        run_pictures.overlay_grid(self.worst, palette, hp.ignore_index, folder / "val_worst.png")
        if confusion is not None:
            run_pictures.confusion_matrix(confusion, hp.class_names, folder / "confusion_matrix.png")
        run_pictures.per_class_iou(metrics, hp.class_names, folder / "per_class_iou.png")
        run_pictures.training_curves(self.history, folder / "training_curves.png")

    def _log_wandb(self, logger: WandbLogger, step: int, examples: list[Shown], hp, confusion) -> None:
        """One W&B history row: examples and worst images with their masks, and the confusion matrix."""
        import wandb
        from wandb.plot.custom_chart import plot_table

        labels = dict(enumerate(hp.class_names))
        if 0 <= hp.ignore_index < 65536 and hp.ignore_index not in labels:
            labels[hp.ignore_index] = "ignored"

        def image(s: Shown) -> wandb.Image:
            masks = {
                "ground_truth": {"mask_data": s.mask.astype(np.int32), "class_labels": labels},
                "prediction": {"mask_data": s.prediction.astype(np.int32), "class_labels": labels},
            }
            return wandb.Image(s.image, masks=masks, caption=f"{s.name} mIoU {s.miou:.3f}")

        row = {key: [image(s) for s in shown] for key, shown in ((EXAMPLES, examples), (WORST, self.worst)) if shown}
        if confusion is not None:
            # W&B's interactive confusion matrix, built from our counts: wandb.plot.confusion_matrix
            # itself wants one (true, predicted) entry per pixel.
            names, counts = hp.class_names, confusion.tolist()
            data = [[names[i], names[j], counts[i][j]] for i in range(len(names)) for j in range(len(names))]
            table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=data)
            fields = {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
            row["val/confusion_matrix"] = plot_table(
                "wandb/confusion_matrix/v1", table, fields, {"title": "validation confusion matrix"}
            )
        logger.experiment.log({**row, "trainer/global_step": step})


class CheckpointOnSigterm(L.Callback):
    """Saves ``last.ckpt`` when the run is stopped by SIGTERM (SLURM sends it before pre-emption);
    the next run in the same folder resumes from it (``resume: auto``).

    Lightning turns SIGTERM into ``SIGTERMException`` at the next batch, so the saved state is
    consistent (mid-epoch). Not Lightning's ``OnExceptionCheckpoint``: that one saves on any
    exception, and a crash may leave a state not worth keeping (NaN weights); and its presence makes
    every ``fit`` resume from the newest checkpoint, which would override ``resume: false``.

    Args:
        dirpath: the checkpoint folder.
        filename: the checkpoint's name, without ``.ckpt``.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last"):
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        epochs = trainer.fit_loop.epoch_progress.current
        # Stopped between epochs (Lightning checks after counting the epoch complete): the
        # ModelCheckpoint's last.ckpt of that epoch is the state to resume from; a save now would
        # count the finished epoch twice on resume.
        if isinstance(exception, SIGTERMException) and epochs.completed < epochs.started:
            trainer.save_checkpoint(self.path)


class StopRanksOnError(L.Callback):
    """When the process that started the DDP ranks fails, kills the ranks it started.

    They would otherwise wait in their next collective until the process group's timeout (30 min
    with gloo, 10 with NCCL), holding their GPUs. Lightning already covers the other way round (a
    failed rank >0 stops every process: its child-process observer) and Ctrl-C, not an error in
    rank 0. Not on SIGTERM: Lightning forwards that to the ranks, which save and stop themselves.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        launcher = trainer.strategy.launcher
        if isinstance(launcher, _SubprocessScriptLauncher) and not isinstance(exception, SIGTERMException):
            launcher.kill(signal.SIGKILL)


class LossProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, showing ``train/loss`` read only when the bar refreshes.

    Logging the loss with ``prog_bar=True`` instead makes Lightning convert it to a Python number
    after every batch: a host-device synchronisation per training step (tests/test_speed.py).
    """

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | float | str]:
        metrics = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            metrics["train/loss"] = float(loss)
        return metrics
