"""Every ``_target_`` node of every option of every config group instantiates as written, with the
arguments semseg passes: what a user reads in conf/ (or in a run's .hydra/config.yaml) is what
the objects are built from, with no key stripped or value translated on the way."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from semseg.run_folder import RunFolder
from semseg.training.checkpoints import build_callbacks
from semseg.training.loggers import logger_configs
from tests.conftest import CONF_DIR, compose_cfg

# The groups whose options hold _target_ nodes, and the parts of a composed config each may set.
GROUP_PARTS = {
    "optimizer": ("optimizer",),
    "scheduler": ("scheduler",),
    "logger": ("logger",),
    "trainer": ("trainer",),
    "debug": ("trainer", "callbacks"),
    "callbacks": ("callbacks",),
    "augment": ("augment",),
    "data": ("augment",),
    "experiment": ("optimizer", "scheduler", "trainer", "callbacks", "augment"),
}


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def _cases() -> list[tuple[str, str]]:
    return [(group, option) for group in GROUP_PARTS for option in _options(group)]


def _instantiate_optimizer(cfg: DictConfig) -> torch.optim.Optimizer:
    # Parameter groups as semseg.task.param_groups makes them: plain dicts, named.
    groups = [{"name": "decoder", "params": [torch.nn.Parameter(torch.zeros(3))]}]
    return instantiate(cfg.optimizer, params=groups, _convert_="partial")


def _instantiate_trainer(trainer: Mapping) -> L.Trainer:
    """``lightning.Trainer`` from the trainer node: null keys are Lightning's defaults (not passed);
    nested ``_target_`` nodes (a strategy, a profiler) are instantiated. GPU choices run on the CPU
    here (no GPU in CI): every other value is Lightning's to accept or refuse."""
    kwargs = {key: value for key, value in OmegaConf.to_container(trainer, resolve=True).items() if value is not None}
    kwargs = {key: instantiate(value) if isinstance(value, Mapping) else value for key, value in kwargs.items()}
    if kwargs.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        kwargs |= {"accelerator": "cpu", "devices": 1}
    return L.Trainer(**kwargs, logger=False, enable_progress_bar=False)


@pytest.mark.parametrize(("group", "option"), _cases())
def test_every_target_node_of_every_option_instantiates_as_written(
    group: str, option: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # MLflow's local store, profilers' files
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_cfg([f"{group}={option}"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "run")
    built = []
    for part in GROUP_PARTS[group]:
        if part == "optimizer":
            optimizer = _instantiate_optimizer(cfg)
            built.append(optimizer)
        elif part == "scheduler":
            built.append(instantiate(cfg.scheduler, optimizer=_instantiate_optimizer(cfg), total_steps=100))
        elif part == "logger" and cfg.logger:
            built += [instantiate(config, _convert_="all") for config in logger_configs(cfg.logger).values()]
        elif part == "trainer":
            built.append(_instantiate_trainer(cfg.trainer))
        elif part == "callbacks":
            built += build_callbacks(cfg.callbacks, RunFolder(cfg.output_dir))
        elif part == "augment":
            built += [instantiate(entry) for entry in cfg.data.augment or []]
    if option not in ("none", "default") or group in ("optimizer", "scheduler", "trainer"):
        assert built, f"{group}={option} built nothing"


def test_an_optimizer_node_holds_only_the_optimizer_classs_arguments():
    """semseg's grouping keys live beside the node (param_groups), not inside it: an optimizer of
    the user's own (SGD here) needs no key it would not take."""
    cfg = compose_cfg(["optimizer._target_=torch.optim.SGD", "~optimizer.weight_decay", "~optimizer.fused"])
    assert isinstance(_instantiate_optimizer(cfg), torch.optim.SGD)
    assert set(compose_cfg([]).param_groups) == {"encoder_lr_mult", "no_decay_norm_bias"}
