"""Training's checkpoints: the callbacks that write them where the run folder says, and the
checkpoint a run resumes from."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from semseg.callbacks import CheckpointOnSigterm
from semseg.errors import ConfigError
from semseg.run_folder import BEST, LAST, RunFolder

log = logging.getLogger(__name__)

# The callbacks config's entries that write the run's own checkpoints (conf/callbacks/default.yaml).
RUN_CHECKPOINT_KEYS = {"model_checkpoint": BEST, "last_checkpoint": LAST}


def build_callbacks(cfg: Mapping | None, run: RunFolder) -> list[L.Callback]:
    """Instantiates the ``callbacks`` group. The run's checkpoints (``model_checkpoint``: best.ckpt,
    ``last_checkpoint``: last.ckpt, and the one ``CheckpointOnSigterm`` saves) are written where
    ``RunFolder`` says, the folder that resuming, eval.py, export.py and report.py read, so their
    paths are not config keys; other ``ModelCheckpoint`` entries without a ``dirpath`` save
    into the run's ``checkpoints/`` too."""
    callbacks = []
    for key, entry in (cfg or {}).items():
        if not entry:
            continue
        kwargs = {}
        if key in RUN_CHECKPOINT_KEYS:
            given = [name for name in ("dirpath", "filename") if name in entry]
            if given:
                raise ConfigError(
                    f"callbacks.{key}.{given[0]}: the run's checkpoints are always checkpoints/best.ckpt and "
                    "last.ckpt (resume=auto, eval.py and report.py find them there); for checkpoints of your "
                    "own, add a ModelCheckpoint under another key of callbacks."
                )
            kwargs = {"dirpath": str(run.checkpoints), "filename": RUN_CHECKPOINT_KEYS[key]}
        elif _target_name(entry) == CheckpointOnSigterm.__name__:
            kwargs = {"path": str(run.last_checkpoint)}
        elif _target_name(entry) == ModelCheckpoint.__name__ and "dirpath" not in entry:
            kwargs = {"dirpath": str(run.checkpoints)}
        callbacks.append(instantiate(entry, **kwargs))
    return callbacks


def _target_name(entry: Mapping | DictConfig) -> str:
    return str(entry.get("_target_", "")).rsplit(".", 1)[-1]


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint training starts from: ``ckpt_path``; else, with ``resume: auto``, the newest
    of the run folder's ``checkpoints/last.ckpt`` and Lightning's SLURM auto-requeue checkpoints
    (``hpc_ckpt_<n>.ckpt``, saved on SIGUSR1), when there is one (a requeued or re-run job);
    else none."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    run = RunFolder(cfg.output_dir)
    found = [p for p in (run.last_checkpoint, *run.slurm_requeue_checkpoints()) if p.is_file()]
    if cfg.get("resume", "auto") == "auto" and found:
        newest = max(found, key=lambda p: p.stat().st_mtime_ns)
        log.info(f"resuming from {newest} (resume=auto; resume=false starts over)")
        return str(newest)
    return None
