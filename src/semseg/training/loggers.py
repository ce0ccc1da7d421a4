"""Experiment loggers: W&B by default (going offline by itself when it cannot go online), CSV,
TensorBoard, MLflow, or several at once; what each gets beyond Lightning's metrics."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from semseg.errors import ConfigError
from semseg.extras import CHOICES, require_extra
from semseg.training.distributed import in_multirun
from semseg.training.mlflow_run import local_store, quiet_mlflow
from semseg.training.mlflow_sweep import SWEEP_TAG, sweep_parent_run

log = logging.getLogger(__name__)

MAX_GROUP_CHARS = 128  # the longest W&B group name
# Where a checkpoint keeps the runs of its loggers, which resuming it continues.
RUN_ID_KEYS = {"wandb": "wandb_run_id", "mlflow": "mlflow_run_id"}
# The short names of the loggers semseg knows (conf/logger/<name>.yaml), by Lightning class.
LOGGER_NAMES = {
    "WandbLogger": "wandb",
    "WandbRunLogger": "wandb",
    "CSVLogger": "csv",
    "TensorBoardLogger": "tensorboard",
    "MLFlowLogger": "mlflow",
    "MLflowRunLogger": "mlflow",
}


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """W&B ``name``, ``group``, ``job_type`` and ``tags`` of a run, from its config choices and
    overrides (MLflow's run name and tags too).

    name: ``<model>-<loss>-s<seed>`` (``unet-ce_dice-s0``); group: the command line's overrides
    without the seed (``experiment=camvid_losses loss=dice``; ``defaults`` for none), so that the
    seeds of one configuration are one group, whose mean and spread W&B draws; job_type: ``train``;
    tags: ``model:<m>``, ``loss:<l>``, ``data:<d>`` (the data config, or the folder's name for data=folder).
    """
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    choices = hydra.runtime.choices if hydra else {}
    model = choices.get("model") or cfg.model.get("arch", "model")
    if model == "fcn" or cfg.model.get("arch") == "fcn":
        model = f"fcn{cfg.model.get('variant', '')}"
    loss = choices.get("loss") or "+".join(cfg.loss.terms)
    # data=folder (the default) is any folder: its own name says which.
    data = choices.get("data") if choices.get("data") not in (None, "folder") else Path(str(cfg.data.root)).name
    return {
        "name": f"{model}-{loss}-s{cfg.seed}",
        "group": seedless_group(list(hydra.overrides.task) if hydra else []),
        "job_type": "train",
        "tags": [f"model:{model}", f"loss:{loss}", f"data:{data}"],
    }


def seedless_group(overrides: list[str]) -> str:
    """A run's group: its overrides without ``seed=`` (and ``seeds=``, ``hydra.*``), at most
    ``MAX_GROUP_CHARS`` (W&B's limit; a longer one is cut and made unique by a digest)."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("seed=", "seeds=", "hydra."))]
    group = " ".join(kept) or "defaults"
    if len(group) > MAX_GROUP_CHARS:
        digest = hashlib.sha1(group.encode()).hexdigest()[:8]
        group = f"{group[: MAX_GROUP_CHARS - 10]}… {digest}"
    return group


def logger_configs(cfg: Mapping) -> dict[str, dict]:
    """The loggers a ``logger`` config describes, by the name a message gives them.

    A ``_target_`` at the top is one logger (``logger=wandb``, named so); each entry that is a
    logger config of its own is one more (``logger=many``, ``+logger@logger.mlflow=mlflow``; named
    ``logger.mlflow``); an entry set to null (``logger.wandb=null``) is none.
    """
    nested = {key: value for key, value in cfg.items() if isinstance(value, Mapping) and "_target_" in value}
    top = {key: value for key, value in cfg.items() if key not in nested}
    configs = {f"logger.{key}": dict(value) for key, value in nested.items()}
    if "_target_" in top:
        return {f"logger={_short_name(top)}": top, **configs}
    stray = [key for key, value in top.items() if value is not None]
    if stray:
        raise ConfigError(
            f"logger.{stray[0]} is not a logger config: with several loggers, each key of logger holds one "
            "(conf/logger/many.yaml), or null to leave it out."
        )
    return configs


def _short_name(config: Mapping) -> str:
    target = str(config["_target_"]).rsplit(".", 1)[-1]
    return LOGGER_NAMES.get(target, target)


def build_logger(
    cfg: Mapping | None, identity: Mapping[str, Any] | None = None, resume_ids: Mapping[str, str] | None = None
) -> Logger | list[Logger] | bool:
    """Instantiates the ``logger`` config group: one logger (``logger=wandb``), a list of them
    (``logger=many``: one per key), or nothing (``logger=none``, or every entry null).

    ``identity`` (``run_identity``) names the run where the config leaves it null: W&B's
    ``name``/``group``/``tags``, MLflow's ``run_name`` and tags. ``resume_ids`` (``logger_run_ids``
    of the checkpoint being resumed) continue its W&B and MLflow runs.

    Raises:
        ConfigError: a logger whose extra is not installed (the install command), or a ``logger``
            entry that is not a logger config.
    """
    if not cfg:
        return False
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    configs = logger_configs(cfg)
    for what, config in configs.items():  # all first: a missing one stops the run before any logger starts
        extra = CHOICES.get(("logger", _short_name(config)))  # the extras that logger=<name> needs
        if extra:
            require_extra(extra, what)
    loggers = [_instantiate(_prepared(config, identity or {}, resume_ids or {})) for config in configs.values()]
    if "_target_" in cfg and len(loggers) == 1:
        return loggers[0]
    return loggers or False


def _prepared(config: dict, identity: Mapping[str, Any], resume_ids: Mapping[str, str]) -> dict:
    """One logger's config with semseg's particulars filled in."""
    name = _short_name(config)
    if name == "wandb":
        return _wandb_config(config, identity, resume_ids.get("wandb"))
    if name == "mlflow":
        return _mlflow_config(config, identity, resume_ids.get("mlflow"))
    return config


def _instantiate(config: dict) -> Logger:
    # Plain containers: wandb.init takes its ``settings`` as a dict, not as OmegaConf's DictConfig.
    logger = instantiate(config, _convert_="all")
    _drop_anonymous(logger)
    return logger


def _wandb_config(config: dict, identity: Mapping[str, Any], resume_id: str | None) -> dict:
    Path(config["save_dir"]).mkdir(parents=True, exist_ok=True)
    for key, value in identity.items():
        if config.get(key) is None:
            config[key] = value
    if resume_id:
        config |= {"id": resume_id, "resume": "allow"}
    return config


def _mlflow_config(config: dict, identity: Mapping[str, Any], resume_id: str | None) -> dict:
    """MLflow's config: the run named and tagged from ``identity``, and MLflow's usage telemetry off
    (the local SQLite store where no ``tracking_uri`` is given is ``MLflowRunLogger``'s). ``resume_id`` (the run
    of the checkpoint being resumed) is continued where the store holds it and the logger can
    (``MLflowRunLogger``, conf/logger/mlflow.yaml's); elsewhere a new run starts."""
    quiet_mlflow()  # before MLflow is imported (by _mlflow_run_exists, or the logger)
    if not config.get("run_name"):
        config["run_name"] = identity.get("name")
    config["tags"] = {**_mlflow_tags(identity), **(config.get("tags") or {})}
    tracking_uri, artifacts = config.get("tracking_uri"), config.get("artifact_location")
    if not tracking_uri:
        tracking_uri, local_artifacts = local_store(config.get("save_dir"))
        artifacts = artifacts or local_artifacts
    if resume_id and config["_target_"].endswith("MLflowRunLogger"):
        if _mlflow_run_exists(tracking_uri, resume_id):
            config["run_id"] = resume_id
            return config
        log.info(f"MLflow run {resume_id} of the checkpoint is not in {tracking_uri}: starting a new run")
    if in_multirun() and rank_zero_only.rank == 0:  # the jobs of a sweep under one parent run
        sweep_dir = Path(HydraConfig.get().sweep.dir)
        parent = sweep_parent_run(tracking_uri, config.get("experiment_name") or "semseg", artifacts, sweep_dir)
        config["tags"] |= {"mlflow.parentRunId": parent, SWEEP_TAG: str(sweep_dir.resolve())}
    return config


def _mlflow_run_exists(tracking_uri: str, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException:
        return False
    return True


def _mlflow_tags(identity: Mapping[str, Any]) -> dict[str, str]:
    """W&B's ``model:unet`` tags as MLflow's key-value tags (``model=unet``), and the group."""
    tags = dict(tag.split(":", 1) for tag in identity.get("tags") or [])
    if identity.get("group"):
        tags["group"] = identity["group"]
    return tags


def _drop_anonymous(logger: Logger) -> None:
    """Lightning's WandbLogger always hands wandb.init ``anonymous`` (None unless asked), and wandb
    warns that the setting has no effect whenever it is given: leave it out when it is None."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous", False) is None:
        del init["anonymous"]


def loggers_of(logger: Logger | list[Logger] | bool) -> list[Logger]:
    """``build_logger``'s result as a list (empty for no logger)."""
    if not logger:
        return []
    return list(logger) if isinstance(logger, list | tuple) else [logger]


def log_run_config(loggers: list[Logger], cfg: DictConfig, module_hparams: Mapping, extra: Mapping) -> None:
    """Gives every logger the run's resolved config and ``extra`` (the network's size).

    Lightning logs the module's hyper-parameters itself (model, loss, optimizer, scheduler, data,
    inference, as the module holds them: the data root made absolute, say); this adds the rest of
    the config (trainer, augment, callbacks, seed, ...). Logging a key twice with two values would
    stop MLflow, whose parameters cannot change. MLflow also gets the whole config as
    ``config.yaml``: its parameters are flat (``trainer/max_epochs``) and Lightning cuts each value
    at 250 characters (a long palette or class list); CSV and TensorBoard keep theirs in
    ``hparams.yaml``, W&B in the run's config.
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    rest = {key: value for key, value in config.items() if key not in module_hparams}
    for logger in loggers:
        logger.log_hyperparams({**rest, **extra})
        if isinstance(logger, MLFlowLogger) and rank_zero_only.rank == 0:
            logger.experiment.log_text(logger.run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")


def logger_run_ids(checkpoint_path: str | Path | None) -> dict[str, str]:
    """The W&B and MLflow run ids saved in a checkpoint (see ``LoggerRunsInCheckpoint``), by logger."""
    if not checkpoint_path or not Path(checkpoint_path).is_file():
        return {}
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    return {name: checkpoint[key] for name, key in RUN_ID_KEYS.items() if checkpoint.get(key)}


class LoggerRunsInCheckpoint(L.Callback):
    """Saves the W&B and MLflow runs' ids in every checkpoint: resuming from it continues them."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint[RUN_ID_KEYS["wandb"]] = logger.version
            elif isinstance(logger, MLFlowLogger) and logger.run_id:
                checkpoint[RUN_ID_KEYS["mlflow"]] = logger.run_id


def mark_preempted(logger: Logger | list[Logger] | bool) -> None:
    """W&B shows the run as pre-empted, to be resumed (SIGTERM stopped it)."""
    for each in loggers_of(logger):
        if isinstance(each, WandbLogger):
            each.experiment.mark_preempting()


def finish_logger(
    logger: Logger | list[Logger] | bool,
    summary: Mapping[str, Any] | None = None,
    exit_code: int = 0,
    say_sync: bool = True,
    preempted: bool = False,
) -> str | None:
    """Ends the run of every logger, ``summary``'s values added, and returns the command that
    uploads an offline W&B run (None when there is none).

    - W&B: the summary joins the run's; an offline run's upload command is printed unless
      ``say_sync`` is false (training's closing summary lists it with the other next commands;
      wandb's own hint is off, ``settings.quiet`` in conf/logger/wandb.yaml, so the user sees one).
      A failed job passes ``exit_code=1``: the next job of a multirun then starts a run of its own
      instead of logging into this one.
    - MLflow: the summary's numbers as metrics (``val/miou_best``, ``train_time_s``, ...); the run
      ends FINISHED, or FAILED with ``exit_code=1`` (also when the failure came after Lightning had
      ended it FINISHED: between fit and test, say), or KILLED when ``preempted`` (SIGTERM: resuming
      the checkpoint continues the run).
    - TensorBoard: the config and the summary's numbers in the HPARAMS tab, to compare runs.
    - Others (CSV): Lightning has finalized them after each stage.
    """
    numbers = {} if exit_code else _numbers(summary or {})
    status = "failed" if exit_code else "success"
    mlflow_status = "KILLED" if preempted else status
    sync = None
    for each in loggers_of(logger):
        if isinstance(each, WandbLogger):
            sync = _finish_wandb(each, summary, exit_code, say_sync)
        elif isinstance(each, MLFlowLogger):
            _finish_mlflow(each, numbers, mlflow_status)
        elif isinstance(each, TensorBoardLogger):
            if numbers:
                each.log_hyperparams(each.hparams, metrics=numbers)
            each.finalize(status)
    return sync


def _numbers(summary: Mapping[str, Any]) -> dict[str, float]:
    """The summary's values that are metrics (numbers, not flags, names or sizes)."""
    return {k: float(v) for k, v in summary.items() if isinstance(v, Real) and not isinstance(v, bool)}


def _finish_mlflow(logger: MLFlowLogger, numbers: Mapping[str, float], status: str) -> None:
    if numbers:
        logger.log_metrics(numbers)
    logger.finalize(status)
    if status != "success" or rank_zero_only.rank != 0:
        return  # a failed run may have no MLflow run: asking for its address would start one
    uri = str(getattr(logger.experiment, "tracking_uri", ""))
    if uri.startswith(("http://", "https://")):
        print(f"MLflow run: {uri.rstrip('/')}/#/experiments/{logger.experiment_id}/runs/{logger.run_id}")


def _finish_wandb(logger: WandbLogger, summary: Mapping[str, Any] | None, exit_code: int, say_sync: bool) -> str | None:
    import wandb

    run = logger.experiment
    for key, value in (summary or {}).items():
        run.summary[key] = value
    run_dir = Path(run.dir).parent  # .../wandb/offline-run-*/files -> the run folder
    offline = run.offline
    wandb.finish(exit_code=exit_code)
    if not offline:
        return None
    command = f"wandb sync {run_dir}"
    if say_sync:
        print(f"W&B run saved offline. Upload it with: {command}")
    return command
