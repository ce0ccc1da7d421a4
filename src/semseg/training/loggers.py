"""Experiment loggers: W&B by default, going offline by itself when it cannot go online."""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from semseg.online import can_reach
from semseg.training.distributed import in_multirun

WANDB_DEFAULT_URL = "https://api.wandb.ai"
WANDB_RUN_ID_KEY = "wandb_run_id"  # where a checkpoint keeps its W&B run, for resuming it


def _wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL)).hostname or "api.wandb.ai"


def _has_wandb_credentials(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_should_be_offline(setting: bool | str | None) -> bool:
    """Resolves ``logger.offline``: true/false as given; ``auto`` goes online only with W&B
    credentials and a reachable server, so a run never prompts for a login or hangs."""
    if setting != "auto":
        return bool(setting)
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    host = _wandb_host()
    return not (_has_wandb_credentials(host) and can_reach(host))


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """W&B ``name``, ``group`` and ``tags`` of a run, from its config choices.

    name: ``<model>-<loss>-s<seed>`` (``unet-ce_dice-s0``); group: the experiment preset, else the
    sweep folder of a multirun (so a sweep's runs sit together, each its own run), else none;
    tags: ``model:<m>``, ``loss:<l>``, ``data:<d>``.
    """
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    model = choices.get("model") or cfg.model.get("arch", "model")
    if model == "fcn" or cfg.model.get("arch") == "fcn":
        model = f"fcn{cfg.model.get('variant', '')}"
    loss = choices.get("loss") or "+".join(cfg.loss.terms)
    data = choices.get("data") or Path(str(cfg.data.root)).name
    group = choices.get("experiment")
    if group in (None, "null") and in_multirun():
        group = Path(HydraConfig.get().sweep.dir).name
    return {
        "name": f"{model}-{loss}-s{cfg.seed}",
        "group": None if group in (None, "null") else str(group),
        "tags": [f"model:{model}", f"loss:{loss}", f"data:{data}"],
    }


def build_logger(
    cfg: Mapping | None, identity: Mapping[str, Any] | None = None, resume_id: str | None = None
) -> Logger | bool:
    """Instantiates the ``logger`` config group; an empty group (``logger=none``) logs nothing.

    For W&B, ``identity`` fills the ``name``/``group``/``tags`` the config leaves null, and
    ``resume_id`` (the run of the checkpoint being resumed) continues that run.
    """
    if not cfg:
        return False
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if cfg.get("_target_", "").endswith("WandbLogger"):
        offline = wandb_should_be_offline(cfg.get("offline", "auto"))
        cfg["offline"] = offline
        if offline:
            # The upload command, with the run's folder, ends the run (finish_logger).
            print("W&B: no credentials or no network, logging offline into the run folder.")
        Path(cfg["save_dir"]).mkdir(parents=True, exist_ok=True)
        for key, value in (identity or {}).items():
            if cfg.get(key) is None:
                cfg[key] = value
        if resume_id:
            cfg |= {"id": resume_id, "resume": "allow"}
    # Plain containers: wandb.init takes its ``settings`` as a dict, not as OmegaConf's DictConfig.
    logger = instantiate(cfg, _convert_="all")
    _drop_anonymous(logger)
    return logger


def _drop_anonymous(logger: Logger) -> None:
    """Lightning's WandbLogger always hands wandb.init ``anonymous`` (None unless asked), and wandb
    warns that the setting has no effect whenever it is given: leave it out when it is None."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous", False) is None:
        del init["anonymous"]


def wandb_run_id(checkpoint_path: str | Path | None) -> str | None:
    """The W&B run id saved in a checkpoint (see ``WandbRunInCheckpoint``)."""
    if not checkpoint_path or not Path(checkpoint_path).is_file():
        return None
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    return checkpoint.get(WANDB_RUN_ID_KEY)


class WandbRunInCheckpoint(L.Callback):
    """Saves the W&B run's id in every checkpoint: resuming from it continues that run."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint[WANDB_RUN_ID_KEY] = logger.version


def finish_logger(
    logger: Logger | bool, summary: Mapping[str, float] | None = None, exit_code: int = 0, say_sync: bool = True
) -> str | None:
    """Closes a W&B run (with ``summary`` values added) and, for an offline one, returns the
    command that uploads it, and prints it unless ``say_sync`` is false (training's closing summary
    lists it with the other next commands; wandb's own hint is off, ``settings.quiet`` in
    conf/logger/wandb.yaml, so the user sees one). A failed job passes ``exit_code=1``: the next job
    of a multirun then starts a run of its own instead of logging into this one."""
    if not isinstance(logger, WandbLogger):
        return None
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
