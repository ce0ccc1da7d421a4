"""SegmentationModule: one shared step for training, validation and testing."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from semseg.data.batch import BatchPreparer
from semseg.data.palette import class_palette
from semseg.errors import ConfigError, TrainingDiverged
from semseg.inference.tiling import InferenceSettings, predict_logits
from semseg.models import build_model, encoder_normalization
from semseg.run_folder import RunFolder
from semseg.task.losses import build_loss
from semseg.task.metrics import BoundaryIoU, confusion_matrix_metric, scores_from_confusion
from semseg.task.schedulers import build_scheduler

EVAL_STAGES = ("val", "test")


class SegmentationModule(L.LightningModule):
    """Wraps a segmentation network with its loss, metrics, optimizer and schedule.

    Everything is rebuilt from plain config dicts saved as hyper-parameters, so a checkpoint holds
    what inference needs (classes, ignore index, channels, normalisation, model config).

    Args:
        model: the ``model`` config group (see ``semseg.models.build_model``).
        loss: the ``loss`` config group (see ``semseg.task.losses.build_loss``).
        optimizer: the ``optimizer`` config group (a ``_target_`` optimizer class and its kwargs).
        scheduler: the ``scheduler`` config group (see ``semseg.task.schedulers.build_scheduler``).
        num_classes: number of classes.
        class_names: one name per class, used in metric names.
        ignore_index: target value ignored by loss and metrics.
        boundary_width: band width in pixels of the boundary IoU metric; no default: the config's
            ``metrics.boundary_width`` is its one source (a checkpoint's hyper-parameters hold it).
        in_channels: image channels.
        class_weights: per-class weights for the loss terms that take them, or None.
        normalization: ``{"mean": [...], "std": [...]}`` of the inputs (0..1 units); None takes
            the encoder's (see ``semseg.models.encoder_normalization``).
        palette: one ``[R, G, B]`` per class for pictures and colour masks; None: ``semseg.data.palette``'s default.
        inference: the ``inference`` config group, how val and test see images (whole, tiled,
            TTA; see ``semseg.inference.tiling``).
        data: the training ``data`` config, kept for inference (input size, label map) and as
            eval.py's default data.
    """

    def __init__(
        self,
        model: Mapping,
        loss: Mapping,
        optimizer: Mapping,
        scheduler: Mapping,
        num_classes: int,
        class_names: Sequence[str],
        ignore_index: int,
        boundary_width: int,
        in_channels: int = 3,
        class_weights: Sequence[float] | None = None,
        normalization: Mapping[str, Sequence[float]] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        inference: Mapping | None = None,
        data: Mapping | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(model, in_channels, num_classes)
        if normalization is None:
            mean, std = encoder_normalization(model, in_channels)
            self.hparams["normalization"] = {"mean": mean, "std": std}
        if palette is None:
            self.hparams["palette"] = class_palette(num_classes).tolist()
        elif len(palette) != num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette):
            raise ConfigError(f"data.palette={list(palette)}: give one [R, G, B] (0-255) per class ({num_classes}).")
        self.prepare_batch = BatchPreparer(*self.normalization, ignore_index)
        self.inference = InferenceSettings.from_config(inference)
        self.loss = build_loss(loss, num_classes, ignore_index, class_weights)
        self.confusion = nn.ModuleDict(
            {stage: confusion_matrix_metric(num_classes, ignore_index) for stage in EVAL_STAGES}
        )
        self.boundary = nn.ModuleDict(
            {stage: BoundaryIoU(num_classes, ignore_index, boundary_width) for stage in EVAL_STAGES}
        )
        self._compiled = False
        # Non-finite training losses seen since the last check: counted on the device, so no
        # step waits for the GPU; read every log_every_n_steps and before any checkpoint is saved.
        self.register_buffer("_nonfinite_losses", torch.zeros((), dtype=torch.long), persistent=False)
        self.last_confusion: dict[str, torch.Tensor] = {}  # of the latest val/test epoch, for pictures

    def configure_model(self) -> None:
        """Compiles the network when ``model.compile`` asks (Lightning calls this before each stage).

        Compiled in place (``nn.Module.compile``), so parameter names and checkpoints are the same
        as without compilation; loading a checkpoint for inference does not compile.
        """
        option = self.hparams.model.get("compile")
        if option and not self._compiled:
            self.net.compile(**({} if option is True else dict(option)))
            self._compiled = True

    @property
    def normalization(self) -> tuple[list[float], list[float]]:
        """The (mean, std) the network's inputs must be normalised with."""
        norm = self.hparams["normalization"]
        return list(norm["mean"]), list(norm["std"])

    @property
    def palette(self) -> np.ndarray:
        """(num_classes, 3) uint8 RGB colour of each class."""
        return np.asarray(self.hparams["palette"], dtype=np.uint8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The loader's uint8 batch, now on this module's device, as the network and loss take it
        (normalised float images, int64 targets): converting here, on the device, moves a quarter
        of float32's bytes from host to GPU and keeps the per-pixel work off the loader."""
        return self.prepare_batch(batch) if isinstance(batch, dict) and "image" in batch else batch

    def _shared_step(self, batch: dict[str, Any], stage: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        images, masks = batch["image"], batch["mask"]
        logits = self(images) if stage == "train" else predict_logits(self.net, images, self.inference)
        total, terms = self.loss(logits, masks)
        batch_size = images.shape[0]
        if stage == "train":
            # Tensors go to self.log unconverted: Lightning reduces them on the device, with no
            # per-step .item() sync of our own. Not prog_bar=True: Lightning would convert the
            # value after every batch (the bar reads it itself: callbacks.LossProgressBar).
            self.log("train/loss", total, on_step=True, batch_size=batch_size)
            for name, value in terms.items():
                self.log(f"train/loss_{name}", value, on_step=True, batch_size=batch_size)
        else:
            self.log(f"{stage}/loss", total, on_epoch=True, sync_dist=True, batch_size=batch_size)
            preds = logits.argmax(dim=1)
            self.confusion[stage].update(preds, masks)
            self.boundary[stage].update(preds, masks)
            return total, preds
        return total, None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, batch_size=batch["image"].shape[0])
        loss = self._shared_step(batch, "train")[0]
        self._nonfinite_losses += (~torch.isfinite(loss.detach())).long()
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (self.trainer.global_step % max(1, self.trainer.log_every_n_steps)) == 0:
            self._stop_if_diverged()

    def _stop_if_diverged(self) -> None:
        """Raises ``TrainingDiverged`` once a non-finite training loss was seen (a host-device sync:
        called every ``log_every_n_steps``, when Lightning's logging syncs anyway, and before saving)."""
        if self._nonfinite_losses.item() == 0:
            return
        trainer = self.trainer
        saved = RunFolder(trainer.default_root_dir).last_checkpoint
        resume = "Restart with "
        if saved.is_file():
            resume = f"The last good checkpoint is untouched: {saved}; resume from it with ckpt_path={saved} and "
        raise TrainingDiverged(
            f"train/loss became NaN or infinite (epoch {trainer.current_epoch}, step {trainer.global_step}); "
            f"training stopped before saving such weights. {resume}a smaller optimizer.lr, "
            "trainer.gradient_clip_val=1.0, or trainer.precision=32-true / bf16-mixed instead of 16-mixed."
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        _, preds = self._shared_step(batch, "val")
        return {"preds": preds}  # for callbacks (ValidationPictures)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _log_scores(self, stage: str) -> None:
        confusion, boundary = self.confusion[stage], self.boundary[stage]
        self.last_confusion[stage] = confusion.compute().detach().cpu()
        scores = scores_from_confusion(
            self.last_confusion[stage], self.hparams.class_names, self.hparams.ignore_index, boundary.compute()
        )
        confusion.reset()
        boundary.reset()
        # Absent classes (NaN) are not logged: they have no score, and a NaN would poison charts.
        # No sync_dist: compute() already summed the confusion matrix over the DDP ranks.
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items() if not math.isnan(v)})

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._stop_if_diverged()  # never overwrite a good checkpoint with NaN weights

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = self.build_optimization(int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def build_optimization(self, total_steps: int) -> tuple[torch.optim.Optimizer, LRScheduler]:
        """The configured optimizer and its per-step schedule over ``total_steps``."""
        optimizer = instantiate(self.hparams.optimizer, params=self.parameters())
        return optimizer, build_scheduler(optimizer, self.hparams.scheduler, total_steps)
