"""Pictures of each validation epoch: fixed example images, the worst images, the confusion matrix.

``ValidationPictures`` keeps a fixed, seeded set of validation images and the k images with the
lowest per-image mIoU, with their predictions. After each validation epoch it logs them to W&B as
``wandb.Image`` with ``masks={"ground_truth", "prediction"}`` (W&B's interactive mask overlay) and
writes the same pictures as PNG into ``<run>/pictures/`` (any logger, or none), plus the
confusion matrix, the per-class IoU and the training curves (with the learning rate). Each
picture's title (and each W&B caption) says what it shows: "val, epoch 12" while training,
"val, epoch 12, best.ckpt" for the best checkpoint validated after it. Lightning has no callback
for segmentation pictures, hence this one.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tqdm.contrib.logging import logging_redirect_tqdm

from semseg.inference import predict_logits
from semseg.visualize import checkpoint_epoch, picture_title, to_display

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
            self.history.append({"epoch": trainer.current_epoch + 1, **metrics})  # from 1, as the console
        examples = sorted(self.examples, key=lambda s: s.name)
        title, checkpoint = self._shown_weights(trainer)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, trainer.global_step, examples, hp, confusion, title)
        if self._draw_pngs(trainer):
            self._draw(Path(trainer.default_root_dir) / "pictures", examples, hp, confusion, metrics, title, checkpoint)

    @staticmethod
    def _shown_weights(trainer: L.Trainer) -> tuple[str, tuple[str, int | None] | None]:
        """The pictures' title ("val, epoch 12, best.ckpt") and the (name, epoch) of the checkpoint
        validated: while fitting, the current weights (no checkpoint); otherwise the checkpoint
        validated (the best one, after fit)."""
        if trainer.state.fn == TrainerFn.FITTING or not trainer.ckpt_path:
            epoch = trainer.current_epoch + 1  # counted from 1, as the console and train.log
            return picture_title("val", epoch, last=epoch == trainer.max_epochs), None
        # Validating does not restore the epoch counter: the checkpoint knows its epoch.
        epoch, name = checkpoint_epoch(trainer.ckpt_path), Path(trainer.ckpt_path).name
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
    ) -> None:
        """The PNGs, each titled ``title`` (what was validated) and what it shows."""
        from semseg import run_pictures  # matplotlib is imported only when pictures are drawn

        folder.mkdir(parents=True, exist_ok=True)
        classes = run_pictures.Classes(hp.class_names, np.asarray(hp.palette, np.uint8), hp.ignore_index)
        save = run_pictures.save_figure
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

    def _log_wandb(self, logger: WandbLogger, step: int, examples: list[Shown], hp, confusion, title: str) -> None:
        """One W&B history row: examples and worst images with their masks (W&B's overlay names the
        classes: its legend), captioned with ``title``, and the confusion matrix."""
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


class ModelSummaryWithFlops(ModelSummary):
    """Lightning's model summary, with the network's FLOPs as training counts them (run_info.json's
    ``gflops``: one image at the training input size) instead of "0".

    Lightning counts FLOPs only by running ``example_input_array`` through the model when fitting
    starts, which this module does not set: a compiled network would compile one more shape for it,
    and training has counted them already. Plain text, through logging: it lands in train.log too.

    Args:
        flops: FLOPs of one forward pass of one image.
        max_depth: as Lightning's ``ModelSummary``.
    """

    def __init__(self, flops: int, max_depth: int = 1):
        super().__init__(max_depth)
        self.flops = flops

    def summarize(self, summary_data, total_parameters, trainable_parameters, model_size, modes, total_flops, **kw):
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]  # not counted per layer
        ModelSummary.summarize(columns, total_parameters, trainable_parameters, model_size, modes, self.flops, **kw)
