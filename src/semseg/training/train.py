"""train(cfg): check the data, fit, pick the best checkpoint, evaluate it, write metrics.json
(and data_report.json, run_info.json); returns the metrics."""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import nullcontext

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from semseg.builders import build_run
from semseg.callbacks import EpochLog, ModelSummaryWithFlops, OptunaPruning, StopRanksOnError
from semseg.data import SegmentationDataModule
from semseg.data.inspection import DataReport
from semseg.data.layout import DataLayout
from semseg.data.rare_class import training_input_size
from semseg.data.sampling import EpochSeeding
from semseg.data.synthetic import require_data_named
from semseg.files import json_safe, write_json_atomic
from semseg.models import count_gflops, count_parameters
from semseg.reporting.console import training_summary
from semseg.run_folder import RunFolder
from semseg.task.module import SegmentationModule
from semseg.task.per_image import write_per_image_scores
from semseg.trainer_defaults import check_gpus_exist, refuse_spawned_ranks, slurm_plugins, trainer_kwargs
from semseg.training.checkpoints import (
    CheckpointBeside,
    build_callbacks,
    check_validation_watchers,
    resume_checkpoint,
    validation_is_on,
)
from semseg.training.distributed import in_multirun, ranks_run_this_job
from semseg.training.host_memory import check_reuse_host_memory, reuse_host_memory
from semseg.training.loggers import (
    LoggerRunsInCheckpoint,
    build_logger,
    finish_logger,
    log_run_config,
    logger_run_ids,
    mark_preempted,
    run_identity,
)
from semseg.training.output_faults import output_faults
from semseg.training.run_lock import run_lock

log = logging.getLogger(__name__)

# GFLOPs are counted at the training input size, capped at this side so that huge images stay cheap.
_MAX_FLOPS_SIDE = 1024


def _model_cost(module: SegmentationModule, data: DictConfig, report: DataReport) -> dict:
    """Parameters and GFLOPs of the network at the training input size (crop, resize, rare-class
    crop, or the most common training image size), for run_info.json and the leaderboard."""
    size = training_input_size(data)
    if size is None:
        sizes = report.splits["train"].image_sizes
        width, height = (int(v) for v in max(sizes, key=sizes.get).split("x"))
        crop = data.get("rare_class", {}).get("crop") if data.get("sampler") == "rare_class" else None
        if crop:  # rare-class sampling cuts the most common size to its window
            height, width = min(height, crop[0]), min(width, crop[1])
    else:
        height, width = size
    height, width = min(height, _MAX_FLOPS_SIDE), min(width, _MAX_FLOPS_SIDE)
    gflops = count_gflops(module.net, data.in_channels, height, width)
    return {"params": count_parameters(module.net), "gflops": gflops, "gflops_input": [height, width]}


def _suggest_pretrained(cfg: DictConfig) -> None:
    # Training a real data set from scratch is rarely what one wants; the synthetic default is
    # meant to run offline in minutes, so it stays quiet there.
    starts_from_weights = any(cfg.model.get(key) for key in ("encoder_weights", "init_from", "from_pretrained"))
    if not cfg.data.get("synthetic") and not starts_from_weights and rank_zero_only.rank == 0:
        log.info(
            "the encoder starts from random weights: on real images, pretrained ones usually do much better; "
            "ask for them with model.encoder_weights=imagenet (downloaded once, then cached)"
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Trains, validates and tests the configured model.

    Args:
        cfg: the composed ``conf/train.yaml``.

    Returns:
        The best checkpoint's ``val/*`` metrics and, when a labelled test split exists, its
        ``test/*`` metrics; also written to ``<output_dir>/metrics.json``.

    Raises:
        ConfigError: another live process is training into the same run folder (``run_lock``).
        OutputError: the run folder's disk or quota is full, or it became read-only or not writable.
    """
    check_gpus_exist(cfg.trainer)  # before any output: asking for absent GPUs is a config error
    refuse_spawned_ranks(cfg.trainer)
    check_validation_watchers(cfg.get("callbacks"), validation_is_on(cfg.trainer))
    require_data_named(cfg.data)
    check_reuse_host_memory(cfg.get("reuse_host_memory", "auto"))
    _suggest_pretrained(cfg)
    run = RunFolder(cfg.output_dir)
    with output_faults(run):
        run.root.mkdir(parents=True, exist_ok=True)
        # Rank 0 owns the run: under DDP every rank calls train() with the same folder.
        with run_lock(run) if rank_zero_only.rank == 0 else nullcontext():
            return _train_into(run, cfg)


def _train_into(run: RunFolder, cfg: DictConfig) -> dict[str, float]:
    """``train`` once the run folder is made and this process holds it."""
    output_dir = run.root
    seed = L.seed_everything(cfg.seed, workers=True)
    # One line per rank: under DDP every rank must show the same digest (the same job, config).
    digest = hashlib.sha1(OmegaConf.to_yaml(cfg, resolve=True).encode()).hexdigest()[:12]
    log.info(f"rank {rank_zero_only.rank}: config digest {digest}, output {output_dir}")

    # Before the data: a missing or damaged ckpt_path stops here, and resume=auto sets a damaged
    # checkpoint aside (inside the run's lock: it moves files).
    ckpt_path = resume_checkpoint(cfg)
    report, module, datamodule = build_run(cfg, seed, resume_from=ckpt_path)
    if rank_zero_only.rank == 0:
        write_json_atomic(run.data_report, report.to_json())
    logger = build_logger(cfg.get("logger"), run_identity(cfg), logger_run_ids(ckpt_path))
    try:
        with ranks_run_this_job():
            metrics, run_info = _fit_and_evaluate(cfg, module, datamodule, logger, report, ckpt_path)
    except SIGTERMException:
        last = run.last_checkpoint
        log.warning(
            f"stopped by SIGTERM: the training state is saved in {last}. Run the same command in the same "
            f"run folder to continue (resume=auto), or pass ckpt_path={last}."
        )
        mark_preempted(logger)  # W&B shows the run as pre-empted, to be resumed
        finish_logger(logger, exit_code=1, preempted=True)  # MLflow: KILLED
        raise SystemExit(0) from None  # a clean stop: the requeued job carries on
    except BaseException:
        finish_logger(logger, exit_code=1)
        raise
    if rank_zero_only.rank == 0:
        write_json_atomic(run.metrics, json_safe(metrics))
        write_json_atomic(run.run_info, run_info)
    sync = finish_logger(logger, summary={"val/miou_best": metrics.get("val/miou"), **run_info}, say_sync=False)
    if rank_zero_only.rank == 0:
        # A multirun's report covers its whole sweep: the jobs' folders are <sweep>/<n>.
        report_folder = output_dir.parent if in_multirun() else output_dir
        log.info(training_summary(output_dir, metrics, run_info, DataLayout.of(cfg.data), report_folder, sync))
    return metrics


def _fit_and_evaluate(
    cfg: DictConfig,
    module: SegmentationModule,
    datamodule: SegmentationDataModule,
    logger,
    report: DataReport,
    ckpt_path: str | None,
) -> tuple[dict[str, float | str], dict]:
    """Fits, then validates (and tests) the best checkpoint; returns its metrics and the run's costs.

    Without validation there is no best checkpoint: the final weights are tested, and the metrics
    say so (``validation: off``, ``checkpoint: last``)."""
    run = RunFolder(cfg.output_dir)
    validates = validation_is_on(cfg.trainer)
    callbacks = build_callbacks(cfg.get("callbacks"), run, with_logger=bool(logger), validates=validates)
    # Not config choices: resuming replays the same epochs only if every epoch is seeded alike,
    # a failed rank 0 must not leave the other ranks waiting, and the run's record (an epoch's
    # line in train.log) must not depend on which callbacks a config picks.
    epoch_log = EpochLog()
    callbacks += [EpochSeeding(datamodule.seed), StopRanksOnError(), LoggerRunsInCheckpoint(), epoch_log]
    # A trial's job of hparams_search=optuna (the sweeper left the trial's link in the run folder):
    # val/miou goes to the trial every epoch, and the study's pruner may stop the training.
    pruning = OptunaPruning.for_run(run.root)
    if pruning is not None:
        callbacks.append(pruning)
    run_info = _model_cost(module, cfg.data, report)
    kwargs = trainer_kwargs(cfg.trainer, cfg.data)
    if kwargs.pop("enable_model_summary", True):  # Lightning's own would say "Total FLOPs: 0"
        callbacks.append(ModelSummaryWithFlops(round(run_info["gflops"] * 1e9)))
    trainer = L.Trainer(
        **kwargs,
        enable_model_summary=False,
        callbacks=callbacks,
        plugins=[CheckpointBeside(), *slurm_plugins()],
        logger=logger,
        default_root_dir=str(cfg.output_dir),
    )
    log_run_config(trainer.loggers, cfg, module.hparams, {"params": run_info["params"], "gflops": run_info["gflops"]})

    reuse_host_memory(cfg.get("reuse_host_memory", "auto"), trains_on_cpu=trainer.strategy.root_device.type == "cpu")
    started = time.perf_counter()
    # weights_only: resuming never runs code from the checkpoint file.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    run_info |= {"train_time_s": round(time.perf_counter() - started, 1), "epochs": trainer.current_epoch}
    if epoch_log.images_per_s is not None:  # training batches only, all ranks
        run_info["train_images_per_s"] = round(epoch_log.images_per_s, 2)

    checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
    metrics: dict[str, float | str] = {}
    module.record_per_image()  # the scored images' confusion matrices, for report.py's intervals
    if best is None:
        # Validation was off (limit_val_batches=0, or check_val_every_n_epoch beyond max_epochs):
        # no best checkpoint exists, and the final weights are the result. Lightning saves the
        # monitor-less last.ckpt after validation when it is not every epoch, so save it here.
        last = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and not c.monitor), None)
        if last is not None:  # every rank: saving has a barrier; rank 0 writes
            trainer.save_checkpoint(run.last_checkpoint, weights_only=False)
            run_info["checkpoint"] = run.relative(run.last_checkpoint)
        log.info("no validation ran: the final weights (checkpoints/last.ckpt) are the result and are tested")
        metrics = {"validation": "off", "checkpoint": "last"}
    else:
        # Re-validating the best checkpoint gives every val/* metric at the best epoch, not only the
        # monitored one.
        validated = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        metrics.update({k: float(v) for k, v in validated[0].items()})
        run_info |= {"checkpoint": run.relative(best), "best_epoch": module.loaded_epoch}
    if cfg.get("run_test", True) and datamodule.has_test_split:
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=True)
        metrics.update({k: float(v) for k, v in tested[0].items()})
    if rank_zero_only.rank == 0 and module.per_image_results:
        hparams = module.hparams
        write_per_image_scores(
            run.per_image_scores, module.per_image_results, hparams.class_names, hparams.ignore_index, module.mode
        )
    return metrics, run_info
