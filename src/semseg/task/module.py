"""SegmentationModule: one shared step for training, validation and testing."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler

from semseg.data.batch import BatchPreparer
from semseg.data.multilabel_masks import MULTICLASS, check_mode, check_threshold
from semseg.data.palette import class_palette
from semseg.errors import ConfigError, TrainingDiverged
from semseg.inference.tiling import InferenceSettings, logits_to_prediction, predict_logits
from semseg.models import build_model, encoder_normalization
from semseg.models.aux_head import AuxHeadSettings, AuxiliaryHead, encoder_stage_channels
from semseg.run_folder import RunFolder
from semseg.task.losses import build_loss
from semseg.task.metrics import (
    BoundaryIoU,
    PresenceConfusion,
    boundary_planes,
    confusion_matrix_metric,
    per_image_boundary_counts,
    per_image_confusion,
    per_image_presence_confusion,
    presence_planes,
    scores_from_confusion,
    scores_from_presence,
)
from semseg.task.param_groups import FineTuning, legacy_grouping, logged_learning_rates, parameter_groups
from semseg.task.per_image import PerImageRecorder
from semseg.task.schedulers import build_scheduler

EVAL_STAGES = ("val", "test")

log = logging.getLogger(__name__)


class SegmentationModule(L.LightningModule):
    """Wraps a segmentation network with its loss, metrics, optimizer and schedule.

    Everything is rebuilt from plain config dicts saved as hyper-parameters, so a checkpoint holds
    what inference needs (classes, ignore index, channels, normalisation, model config).

    Args:
        model: the ``model`` config group (see ``semseg.models.build_model``).
        loss: the ``loss`` config group (see ``semseg.task.losses.build_loss``).
        optimizer: the ``optimizer`` config group (a ``_target_`` optimizer class and its kwargs).
        param_groups: the ``param_groups`` config (``semseg.task.param_groups``); None in checkpoints
            of runs from before it, whose ``optimizer`` config held its keys.
        scheduler: the ``scheduler`` config group (see ``semseg.task.schedulers.build_scheduler``).
        num_classes: number of classes.
        class_names: one name per class, used in metric names.
        ignore_index: target value ignored by loss and metrics.
        boundary_width: band width in pixels of the boundary IoU metric; no default: the config's
            ``metrics.boundary_width`` is its one source (a checkpoint's hyper-parameters hold it).
        in_channels: image channels.
        class_weights: per-class weights for the loss terms that take them, or None.
        normalization: ``{"mean": [...], "std": [...], "max_pixel_value": 255 or 65535}`` of the
            inputs (mean and std in 0..1 units, of pixel values divided by ``max_pixel_value``: the
            images' depth, 255 when absent); None or a null mean takes the encoder's (see
            ``semseg.models.encoder_normalization``).
        palette: one ``[R, G, B]`` per class for pictures and colour masks; None: ``semseg.data.palette``'s default.
        inference: the ``inference`` config group, how val and test see images (whole, tiled,
            TTA; see ``semseg.inference.tiling``).
        data: the training ``data`` config, kept for inference (input size, label map) and as
            eval.py's default data.
        mode: ``data.mode``: ``multiclass`` (softmax, argmax), ``binary`` (one foreground logit) or
            ``multilabel`` (a sigmoid per class); saved, so inference reads its checkpoints alike.
        threshold: ``data.threshold``, the sigmoid probability above which binary and multilabel
            outputs count as present.
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
        normalization: Mapping[str, Sequence[float] | float | None] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        inference: Mapping | None = None,
        data: Mapping | None = None,
        mode: str = MULTICLASS,
        threshold: float = 0.5,
        param_groups: Mapping | None = None,
    ):
        super().__init__()
        check_mode(mode, num_classes)
        check_threshold(threshold)
        self.save_hyperparameters()
        self.net = build_model(model, in_channels, num_classes)
        if self.net.computes_own_loss and mode != MULTICLASS:
            raise ConfigError(
                f"data.mode={mode}: model.arch={model['arch']} gives each pixel one class (mask classification); "
                "use data.mode=multiclass, or another model for overlapping classes."
            )
        self._fine_tuning()  # a bad fine-tuning setting stops here, before any work
        self.aux_settings = AuxHeadSettings.from_config(model.get("aux_head"))
        self.aux_head = self._build_aux_head(num_classes)
        # The aux head's input, kept by a hook on the encoder while fitting (on_fit_start).
        self._aux_features: torch.Tensor | None = None
        self._aux_hook = None
        normalization = dict(normalization or {})
        if normalization.get("mean") is None or normalization.get("std") is None:
            normalization["mean"], normalization["std"] = encoder_normalization(model, in_channels)
        normalization.setdefault("max_pixel_value", 255.0)  # checkpoints from before 16-bit images
        self.hparams["normalization"] = normalization
        if palette is None:
            # Sigmoid tasks have no background class: every class gets a colour other than black.
            default = class_palette(num_classes) if mode == MULTICLASS else class_palette(num_classes + 1)[1:]
            self.hparams["palette"] = default.tolist()
        elif len(palette) != num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette):
            raise ConfigError(f"data.palette={list(palette)}: give one [R, G, B] (0-255) per class ({num_classes}).")
        self.prepare_batch = BatchPreparer(*self.normalization, ignore_index, self.max_pixel_value)
        self.inference = InferenceSettings.from_config(inference)
        self.loss = build_loss(loss, num_classes, ignore_index, class_weights, mode)
        if mode == MULTICLASS:
            self.confusion = nn.ModuleDict(
                {stage: confusion_matrix_metric(num_classes, ignore_index) for stage in EVAL_STAGES}
            )
            self.boundary = nn.ModuleDict(
                {stage: BoundaryIoU(num_classes, ignore_index, boundary_width) for stage in EVAL_STAGES}
            )
        else:  # each class a yes/no: a (K, 2, 2) confusion, boundaries of each class plane
            self.confusion = nn.ModuleDict(
                {stage: PresenceConfusion(num_classes, ignore_index) for stage in EVAL_STAGES}
            )
            self.boundary = nn.ModuleDict(
                {stage: BoundaryIoU(2 * num_classes, -1, boundary_width) for stage in EVAL_STAGES}
            )
        self._compiled = False
        # Non-finite training losses seen since the last check: counted on the device, so no
        # step waits for the GPU; read every log_every_n_steps and before any checkpoint is saved.
        self.register_buffer("_nonfinite_losses", torch.zeros((), dtype=torch.long), persistent=False)
        self.last_confusion: dict[str, torch.Tensor] = {}  # of the latest val/test epoch, for pictures
        # Per-image records (semseg.task.per_image) of val and test while record_per_image is on:
        # the final scoring of a run, or eval.py; ``per_image_results`` holds each stage's latest.
        self._recorders: dict[str, PerImageRecorder] | None = None
        self.per_image_results: dict[str, tuple] = {}
        # The epoch (from 1) of the checkpoint last loaded into this module (validating the best one
        # after fit): read as it loads, not by opening the file a second time.
        self.loaded_epoch: int | None = None

    def configure_model(self) -> None:
        """Compiles the network when ``model.compile`` asks (Lightning calls this before each stage).

        Compiled in place (``nn.Module.compile``), so parameter names and checkpoints are the same
        as without compilation; loading a checkpoint for inference does not compile.
        """
        option = self.hparams.model.get("compile")
        if option and not self._compiled:
            self.net.compile(**({} if option is True else dict(option)))
            self._compiled = True

    def _build_aux_head(self, num_classes: int) -> AuxiliaryHead | None:
        """``model.aux_head``'s head on its encoder stage, or None when its weight is 0. It lives in
        this module, not in the network: checkpoints hold it (to resume), exports and inference never see it."""
        if not self.aux_settings.enabled:
            return None
        arch = self.hparams.model["arch"]
        if self.net.computes_own_loss:
            raise ConfigError(
                f"model.aux_head: model.arch={arch} trains on a loss of its own; set model.aux_head.weight=0."
            )
        channels = encoder_stage_channels(self._encoder(), self.aux_settings, arch)
        return AuxiliaryHead(channels, self.aux_settings.channels, num_classes)

    def on_fit_start(self) -> None:
        # A hook for the fit only (not per step: a compiled network would be re-traced at every
        # change of its hooks), removed when fitting ends, before evaluation and exports.
        if self.aux_head is not None and self._aux_hook is None:
            self._aux_hook = self._encoder().register_forward_hook(self._keep_aux_features)

    def on_fit_end(self) -> None:
        if self._aux_hook is not None:
            self._aux_hook.remove()
            self._aux_hook, self._aux_features = None, None

    def _keep_aux_features(self, _encoder: nn.Module, _inputs: Any, features: Sequence[torch.Tensor]) -> None:
        if self.training:
            self._aux_features = features[self.aux_settings.stage]

    def _training_loss(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training objective and its named terms: the architecture's own loss (mask
        classification), or the ``loss`` config's terms over the logits, plus ``aux`` (the same
        terms over the aux head's logits, weighted ``model.aux_head.weight``) when there is one."""
        if self.net.computes_own_loss:
            return self.net.training_loss(images, masks, self.hparams.ignore_index)
        total, terms = self.loss(self(images), masks)
        if self.aux_head is None:
            return total, terms
        features, self._aux_features = self._aux_features, None
        if features is None:
            raise RuntimeError("the aux head's encoder features were not captured: training steps run inside fit()")
        height, width = images.shape[-2:]
        stride = self.net.stride  # the encoder saw the input padded to the stride: crop as the logits are
        aux_logits = self.aux_head(features, (height + (-height % stride), width + (-width % stride)))
        aux_total, _ = self.loss(aux_logits[..., :height, :width], masks)
        return total + self.aux_settings.weight * aux_total, {**terms, "aux": aux_total}

    def _encoder(self) -> nn.Module | None:
        """The network's encoder (smp's architectures and semseg's FCN call it ``encoder``), or None."""
        return getattr(self.net.architecture, "encoder", None)

    def _optimizer_and_grouping(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The optimizer's own arguments and the ``param_groups`` config (from the optimizer config
        in checkpoints of runs from before it: ``legacy_grouping``)."""
        arguments, legacy = legacy_grouping(self.hparams.optimizer)
        grouping = self.hparams.get("param_groups")
        return arguments, dict(legacy if grouping is None else grouping)

    def _fine_tuning(self) -> FineTuning:
        """The checked ``model.freeze_encoder``, ``param_groups.encoder_lr_mult`` and ``no_decay_norm_bias``."""
        grouping = self._optimizer_and_grouping()[1]
        return FineTuning.from_config(self.hparams.model, grouping, self._encoder() is not None)

    def train(self, mode: bool = True) -> SegmentationModule:
        """As ``nn.Module.train``, but a frozen encoder (no parameter of it trains) stays in eval mode,
        whoever switches the module to training: its BatchNorm statistics stay the ones it was frozen
        with, and its features the ones the decoder learns from (no dropout)."""
        super().train(mode)
        encoder = self._encoder()
        if mode and encoder is not None and not any(p.requires_grad for p in encoder.parameters()):
            encoder.eval()
        return self

    # Not Lightning's BaseFinetuning: its unfreeze_and_add_param_group adds the encoder's group to the
    # optimizer mid-run, a group the warm-up and decay schedule (built with the optimizer) does not
    # cover. Here the encoder's group is in the optimizer from the start (semseg.task.param_groups),
    # and its parameters get no gradient until their epoch, so the optimizer skips them until then.
    def _freeze_encoder_as_scheduled(self, set_mode: bool) -> None:
        """Freezes or unfreezes the encoder as ``model.freeze_encoder`` says for the current epoch:
        ``requires_grad``, and with ``set_mode`` its train/eval mode. Nothing without the setting."""
        settings = self._fine_tuning()
        if settings.freeze_encoder is False:
            return
        frozen = settings.encoder_frozen_at(self.current_epoch)
        encoder = self._encoder()
        encoder.requires_grad_(not frozen)
        if set_mode:
            encoder.train(self.training and not frozen)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._fine_tuning().freeze_encoder is True:
            # Before the strategy wraps the network: DDP then leaves the encoder out of its gradient
            # synchronisation. (Frozen for N epochs, it must be in it: see configure_optimizers.)
            self._encoder().requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        # A rule of the epoch, not a state: a run resumed at any epoch is frozen, or trained, as one
        # that never stopped. The eval mode is set here, not before: Lightning warns of modules in
        # eval mode when training starts.
        self._freeze_encoder_as_scheduled(set_mode=True)

    @property
    def normalization(self) -> tuple[list[float], list[float]]:
        """The (mean, std) the network's inputs must be normalised with."""
        norm = self.hparams["normalization"]
        return list(norm["mean"]), list(norm["std"])

    @property
    def max_pixel_value(self) -> float:
        """The full intensity of the images the network takes: 255 (8-bit) or 65535 (16-bit)."""
        return float(self.hparams["normalization"].get("max_pixel_value", 255.0))

    @property
    def palette(self) -> np.ndarray:
        """(num_classes, 3) uint8 RGB colour of each class."""
        return np.asarray(self.hparams["palette"], dtype=np.uint8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    @property
    def mode(self) -> str:
        """``data.mode`` of the task (checkpoints from before it are multiclass)."""
        return self.hparams.get("mode", MULTICLASS)

    def predict_logits(self, images: torch.Tensor, settings: InferenceSettings | None = None) -> torch.Tensor:
        """``predict_logits`` of the network with ``settings`` (default: the module's own), softmax- or
        sigmoid-averaged as the mode reads its outputs."""
        return predict_logits(self.net, images, settings or self.inference, sigmoid=self.mode != MULTICLASS)

    def prediction(self, logits: torch.Tensor) -> torch.Tensor:
        """What the mode predicts from logits: class indices (N, H, W), binary 0/1 (N, H, W) or
        multilabel 0/1 planes (N, K, H, W) (``logits_to_prediction``)."""
        return logits_to_prediction(logits, self.mode, self.hparams.get("threshold", 0.5))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The loader's uint8 batch, now on this module's device, as the network and loss take it
        (normalised float images, int64 targets): converting here, on the device, moves a quarter
        of float32's bytes from host to GPU and keeps the per-pixel work off the loader."""
        return self.prepare_batch(batch) if isinstance(batch, dict) and "image" in batch else batch

    def _shared_step(self, batch: dict[str, Any], stage: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        images, masks = batch["image"], batch["mask"]
        batch_size = images.shape[0]
        if stage == "train":
            total, terms = self._training_loss(images, masks)
            # Tensors go to self.log unconverted: Lightning reduces them on the device, with no
            # per-step .item() sync of our own. Not prog_bar=True: Lightning would convert the
            # value after every batch (the bar reads it itself: callbacks.LossProgressBar).
            self.log("train/loss", total, on_step=True, batch_size=batch_size)
            for name, value in terms.items():
                self.log(f"train/loss_{name}", value, on_step=True, batch_size=batch_size)
        else:
            logits = self.predict_logits(images)
            total = self.loss(logits, masks)[0]
            self.log(f"{stage}/loss", total, on_epoch=True, sync_dist=True, batch_size=batch_size)
            preds = self.prediction(logits)
            if self.mode == MULTICLASS:
                self.confusion[stage].update(preds, masks)
                self.boundary[stage].update(preds, masks)
            else:
                self.confusion[stage].update(*presence_planes(preds, masks))
                self.boundary[stage].update(*boundary_planes(preds, masks, self.hparams.ignore_index))
            if self._recorders is not None:
                self._record_per_image(stage, batch["name"], preds, masks)
            return total, preds
        return total, None

    def record_per_image(self, on: bool = True) -> None:
        """Turns the per-image records of the val and test stages on (each epoch's land in
        ``per_image_results``) or off. Off in training's epochs: recording copies every batch's
        matrices to the host."""
        self._recorders = {stage: PerImageRecorder() for stage in EVAL_STAGES} if on else None

    def _record_per_image(self, stage: str, names: list[str], preds: torch.Tensor, masks: torch.Tensor) -> None:
        ignore_index, width = self.hparams.ignore_index, self.hparams.boundary_width
        if self.mode == MULTICLASS:
            classes = self.hparams.num_classes
            confusion = per_image_confusion(preds, masks, classes, ignore_index)
            counts = per_image_boundary_counts(preds, masks, classes, ignore_index, width)
        else:
            confusion = per_image_presence_confusion(*presence_planes(preds, masks), ignore_index)
            # boundary_planes makes each class plane an image: its counts are summed back per image.
            plane_preds, plane_labels = boundary_planes(preds, masks, ignore_index)
            planes = 2 * confusion.shape[1]
            counts = per_image_boundary_counts(plane_preds, plane_labels, planes, -1, width)
            counts = tuple(c.view(len(names), -1, planes).sum(1) for c in counts)
        self._recorders[stage].add(names, confusion, *counts)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        rates = logged_learning_rates(self.optimizers().param_groups)  # train/lr, train/lr_encoder
        self.log_dict(rates, on_step=True, batch_size=batch["image"].shape[0])
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
        if self.mode == MULTICLASS:
            scores = scores_from_confusion(
                self.last_confusion[stage], self.hparams.class_names, self.hparams.ignore_index, boundary.compute()
            )
        else:
            scores = scores_from_presence(self.last_confusion[stage], self.hparams.class_names, boundary.compute())
        confusion.reset()
        boundary.reset()
        if self._recorders is not None:
            self.per_image_results[stage] = self._recorders[stage].arrays()
            self._recorders[stage] = PerImageRecorder()
        # Absent classes (NaN) are not logged: they have no score, and a NaN would poison charts.
        # No sync_dist: compute() already summed the confusion matrix over the DDP ranks.
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items() if not math.isnan(v)})

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._stop_if_diverged()  # never overwrite a good checkpoint with NaN weights

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Notes the checkpoint's epoch (``loaded_epoch``). A run resumes with the parameter groups it
        was saved with, or its optimizer state would not load: runs from before
        ``param_groups.no_decay_norm_bias`` decayed every parameter, in one group."""
        self.loaded_epoch = int(checkpoint["epoch"]) + 1 if "epoch" in checkpoint else None
        saved = checkpoint.get("hyper_parameters", {})
        if "optimizer" not in saved:
            return
        saved_grouping = saved.get("param_groups") or legacy_grouping(saved["optimizer"])[1]
        grouping = self._optimizer_and_grouping()[1]
        if "no_decay_norm_bias" not in saved_grouping and grouping.get("no_decay_norm_bias"):
            self.hparams["param_groups"] = {**grouping, "no_decay_norm_bias": False}
            if rank_zero_only.rank == 0:
                log.info(
                    "the checkpoint's run predates param_groups.no_decay_norm_bias: it goes on with weight decay "
                    "on every parameter, as its saved optimizer state has it"
                )

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = self.build_optimization(int(self.trainer.estimated_stepping_batches))
        self._check_freezing_under_ddp()
        # Frozen now, the encoder's parameters count as not trainable in the model summary (when
        # fitting starts); a run resumed past the frozen epochs unfreezes as its first epoch starts.
        self._freeze_encoder_as_scheduled(set_mode=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _check_freezing_under_ddp(self) -> None:
        """DDP syncs the gradients of the parameters that required one when it wrapped the network,
        and expects each of them to get one at every step unless it looks for unused parameters (whose
        gradients it then leaves alone): only then can an encoder wait frozen in that sync for its epoch."""
        freeze = self._fine_tuning().freeze_encoder
        ddp = self.trainer.model
        if isinstance(freeze, bool) or not isinstance(ddp, DistributedDataParallel) or ddp.find_unused_parameters:
            return
        raise ConfigError(
            f"model.freeze_encoder={freeze} under DDP needs +trainer.strategy.find_unused_parameters=true with "
            "trainer=ddp or ddp_cpu (the encoder joins training at that epoch; trainer.strategy="
            "ddp_find_unused_parameters_true does too, with Lightning's 30-minute timeout), or "
            "model.freeze_encoder=true (frozen throughout)."
        )

    def build_optimization(self, total_steps: int) -> tuple[torch.optim.Optimizer, LRScheduler]:
        """The configured optimizer over the module's parameter groups (the encoder's rate or freezing,
        no decay on norm layers and biases: ``semseg.task.param_groups``), and its per-step schedule
        over ``total_steps``, which scales every group's own rate alike."""
        arguments = self._optimizer_and_grouping()[0]
        groups = parameter_groups(self, self._encoder(), self._fine_tuning(), arguments.get("lr"))
        # _convert_="partial": the groups reach the optimizer as plain dicts and lists (torch's
        # optimizers take no DictConfig), holding the module's own parameters.
        optimizer = instantiate(arguments, params=groups, _convert_="partial")
        return optimizer, build_scheduler(optimizer, self.hparams.scheduler, total_steps)
