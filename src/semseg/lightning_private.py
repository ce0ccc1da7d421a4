"""Every use of Lightning's private API in semseg, in one place, so that an upgrade that changes
them breaks here and nowhere else. Checked with Lightning 2.6; each function says what it relies on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher


def is_subprocess_launcher(launcher: Any) -> bool:
    """True when ``launcher`` started the other DDP ranks as child processes of this one (the
    ``ddp`` strategy run from a script); relies on ``_SubprocessScriptLauncher`` and its ``kill``."""
    return isinstance(launcher, _SubprocessScriptLauncher)


def training_loaders(trainer: L.Trainer) -> Iterable[Any]:
    """The fit loop's training data loaders; relies on ``fit_loop._combined_loader.flattened``
    (public ``trainer.train_dataloader`` is the combined loader, built later)."""
    return trainer.fit_loop._combined_loader.flattened


def restart_training_iterator(trainer: L.Trainer) -> None:
    """Starts the fit loop's training iterator afresh (a new iterator over every loader); relies
    on ``fit_loop._data_fetcher``, which the loop keeps across the epoch it resumes at."""
    iter(trainer.fit_loop._data_fetcher)


def flat_params(params: Any) -> dict[str, Any]:
    """Hyper-parameters as loggers flatten them (``trainer/max_epochs``: value); relies on
    ``lightning.fabric.utilities.logger._convert_params`` and ``_flatten_dict``."""
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

    return _flatten_dict(_convert_params(params))
