"""Experiment loggers: W&B by default, going offline by itself when it cannot go online."""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger

from semseg.network import can_reach

WANDB_DEFAULT_URL = "https://api.wandb.ai"


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


def build_logger(cfg: Mapping | None) -> Logger | bool:
    """Instantiates the ``logger`` config group; an empty group (``logger=none``) logs nothing."""
    if not cfg:
        return False
    cfg = dict(cfg)
    if cfg.get("_target_", "").endswith("WandbLogger"):
        offline = wandb_should_be_offline(cfg.get("offline", "auto"))
        cfg["offline"] = offline
        if offline:
            print("W&B: no credentials or no network, logging offline (upload later with `wandb sync`).")
        Path(cfg["save_dir"]).mkdir(parents=True, exist_ok=True)
    return instantiate(cfg)


def finish_logger(logger: Logger | bool) -> None:
    """Closes a W&B run and, for an offline one, prints the command that uploads it."""
    if not isinstance(logger, WandbLogger):
        return
    import wandb

    run = logger.experiment
    run_dir = Path(run.dir).parent  # .../wandb/offline-run-*/files -> the run folder
    offline = run.offline
    wandb.finish()
    if offline:
        print(f"W&B run saved offline. Upload it with: wandb sync {run_dir}")
