"""What a person watching training sees: the progress bar (or plain lines without a terminal) and
one line per epoch in the console and train.log."""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import ExitStack

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)


# The validation scores the progress bar shows, and those of each epoch's line in train.log.
BAR_VAL_METRICS = ("val/loss", "val/miou")
EPOCH_VAL_METRICS = ("val/loss", "val/miou", "val/dice", "val/pixel_acc", "val/boundary_iou")


def epoch_label(trainer: L.Trainer) -> str:
    """``epoch 3/30``: the epoch being trained, counted from 1 as people count."""
    total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    return f"epoch {trainer.current_epoch + 1}" + (f"/{total}" if total else "")


def validation_scores(trainer: L.Trainer, keys: tuple[str, ...]) -> dict[str, float]:
    """The latest validation's ``keys``, from a validation of training only (not the sanity check).

    Called once a validation ends: its epoch-level values are reduced by then, so reading them is
    one wait for the device per validation, not per step."""
    if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
        return {}
    return {k: float(trainer.callback_metrics[k]) for k in keys if k in trainer.callback_metrics}


class LossProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, showing ``train/loss`` read only when the bar refreshes, and the last
    validation's ``val/loss`` and ``val/miou``.

    Logging the loss with ``prog_bar=True`` instead makes Lightning convert it to a Python number
    after every batch: a host-device synchronisation per training step (tests/test_speed.py).

    When stdout is not a terminal (a pipe, a log file, a batch job's output), tqdm's redrawing with
    carriage returns would fill it with fragments of bars: there the bar prints a plain line every
    ``line_every_s`` seconds of training instead, and ``EpochLog`` a line per epoch.

    Args:
        refresh_rate: batches between redraws of the bar; 0 turns the bar (and the lines) off.
        process_position, leave: as Lightning's ``TQDMProgressBar``.
        line_every_s: without a terminal, the seconds of training between two progress lines.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False, line_every_s: float = 30):
        super().__init__(refresh_rate, process_position, leave)
        self.line_every_s = line_every_s
        self.val_metrics: dict[str, float] = {}
        self.plain = False
        self._epoch_started = self._last_line = 0.0
        self._logs_above_bar = ExitStack()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.plain = not sys.stdout.isatty()
        if self.plain:
            self.disable()

    def enable(self) -> None:
        if not self.plain:  # Lightning's tuner re-enables the bar after its trials
            super().enable()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | float | str]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's run version: nothing to watch
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            metrics["train/loss"] = float(loss)
        return metrics | self.val_metrics

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_metrics = validation_scores(trainer, BAR_VAL_METRICS) or self.val_metrics
        super().on_validation_end(trainer, pl_module)  # shows them on the training bar

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # Also here: resuming mid-epoch, Lightning skips on_train_epoch_start for that epoch.
        self._epoch_started = self._last_line = time.monotonic()
        if self.is_enabled:
            # While the bar is drawn, log records (EpochLog's lines, Lightning's) are written above
            # it through tqdm, instead of into its line.
            self._logs_above_bar.enter_context(logging_redirect_tqdm())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._logs_above_bar.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._logs_above_bar.close()

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        # Counted from 1, as EpochLog's lines and the summary's best epoch (Lightning's bar: from 0).
        self.train_progress_bar.set_description(epoch_label(trainer).capitalize())
        self._epoch_started = self._last_line = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        now = time.monotonic()
        due = now - self._last_line >= self.line_every_s
        if self.plain and due and self.refresh_rate > 0 and trainer.is_global_zero:
            self._last_line = now
            print(self.progress_line(trainer, batch_idx + 1, now - self._epoch_started), flush=True)

    def progress_line(self, trainer: L.Trainer, batches: int, seconds: float) -> str:
        """``epoch 3/30, batch 120/500: train/loss 0.412, 41 s into the epoch``."""
        total = self.total_train_batches
        line = f"{epoch_label(trainer)}, batch {batches}" + (f"/{total}" if total and math.isfinite(total) else "")
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            line += f": train/loss {float(loss):.3f}"
        return f"{line}, {seconds:.0f} s into the epoch"


class EpochLog(L.Callback):
    """Logs one line per training epoch (rank 0): its mean training loss, the validation's scores,
    the learning rate and the time, e.g.
    ``epoch 3/30: train/loss 0.412 val/loss 0.381 val/miou 0.612 ... lr 1.2e-03  12.3 s``.

    Python logging, so the lines also land in the run's ``train.log`` (Hydra's file handler): the
    run folder alone, or a batch job's output, tells how training went, whatever the progress bar.
    The training loss is summed on the device and read once per epoch, so no step waits for it.

    It also times the training batches alone (validation at the end of an epoch aside):
    ``images_per_s`` is the run's training throughput, all ranks together (this rank's images
    times the world size), which report.py sets against mIoU.
    """

    def __init__(self):
        self._reset()
        self.train_seconds = 0.0
        self.train_images = 0

    def _reset(self) -> None:
        self._started = self._last_batch_end = time.perf_counter()
        self._images = 0
        self._loss_sum: torch.Tensor | None = None
        self._batches = 0
        self._val: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._last_batch_end = time.perf_counter()
        self._images += len(batch["image"]) if isinstance(batch, dict) and "image" in batch else 0
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach() * trainer.accumulate_grad_batches  # Lightning hands over loss / accumulation
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._batches += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val = validation_scores(trainer, EPOCH_VAL_METRICS) or self._val

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_seconds += self._last_batch_end - self._started
        self.train_images += self._images * trainer.world_size  # DDP ranks train batches of one size
        if trainer.is_global_zero:
            log.info(self.line(trainer))

    @property
    def images_per_s(self) -> float | None:
        """Training images per second of training batches (all ranks), over the epochs so far."""
        return self.train_images / self.train_seconds if self.train_seconds > 0 else None

    def line(self, trainer: L.Trainer) -> str:
        """The epoch's line; the validation's scores only when a validation ran in this epoch."""
        scores = {}
        if self._loss_sum is not None:
            scores["train/loss"] = float(self._loss_sum) / self._batches
        scores |= self._val
        text = f"{epoch_label(trainer)}: " + " ".join(f"{k} {v:.3f}" for k, v in scores.items())
        if trainer.optimizers:
            text += f"  lr {trainer.optimizers[0].param_groups[0]['lr']:.1e}"
        return f"{text}  {time.perf_counter() - self._started:.1f} s"
