"""Lightning's WandbLogger whose ``offline`` also takes ``auto``: online only where it can be."""

from __future__ import annotations

import netrc
import os
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

from semseg.online import can_reach

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


class WandbRunLogger(WandbLogger):
    """``WandbLogger`` with ``offline`` true, false or ``auto`` (``wandb_should_be_offline``).

    wandb itself has no such mode: online without credentials it prompts for a login, and without
    a network it waits for the server. ``auto`` is a value of this class, so that conf/logger/wandb.yaml
    instantiates as written and the saved config says what the logger was given.
    """

    def __init__(self, *args: Any, offline: bool | str = "auto", **kwargs: Any):
        offline = wandb_should_be_offline(offline)
        if offline:
            # The upload command, with the run's folder, ends the run (finish_logger).
            print("W&B: no credentials or no network, logging offline into the run folder.")
        super().__init__(*args, offline=offline, **kwargs)
