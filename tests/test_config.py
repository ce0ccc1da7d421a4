"""Every config option composes, and the contract's keys are where users expect them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from semseg.config_resolvers import conf_file
from semseg.errors import ConfigError
from semseg.hydra_callbacks import seed_values
from semseg.task.schedulers import build_scheduler
from semseg.training.loggers import run_identity, seedless_group
from tests.conftest import CONF_DIR, compose_cfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_defaults_compose_with_contract_keys():
    cfg = compose_cfg()
    for key in (
        "root",
        "num_classes",
        "class_names",
        "ignore_index",
        "label_map",
        "in_channels",
        "batch_size",
        "num_workers",
        "image_size",
        "crop_size",
    ):
        assert key in set(cfg.data), key  # data.root and data.num_classes: ??? (the user's to give)
    assert OmegaConf.is_missing(cfg.data, "root") and OmegaConf.is_missing(cfg.data, "num_classes")
    assert cfg.model.arch == "unet"
    assert {"encoder_name", "encoder_weights"} <= set(cfg.model)
    assert set(cfg.loss.terms) == {"ce"} and cfg.loss.class_weights == "auto"  # data=folder's recipe
    assert cfg.callbacks.model_checkpoint.monitor == "val/miou"
    assert "seed" in cfg and "ckpt_path" in cfg


@pytest.mark.parametrize(
    "group", ["data", "model", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment"]
)
def test_every_option_composes(group: str):
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}"])
        assert cfg is not None


@pytest.mark.parametrize("option", options("scheduler"))
def test_scheduler_presets_are_the_only_source_of_their_settings(option):
    """Each preset builds, and without any one of its keys the error names it (no fallback in code)."""
    # With a warm-up, so that every key is read (warmup_start_factor only matters then).
    scheduler = OmegaConf.to_container(compose_cfg([f"scheduler={option}", "scheduler.warmup_ratio=0.1"]).scheduler)

    def build(cfg: dict) -> None:
        build_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), cfg, total_steps=100)

    build(scheduler)
    for key in scheduler:
        with pytest.raises(ConfigError, match=f"scheduler.{key} is missing"):
            build({k: v for k, v in scheduler.items() if k != key})


def test_isbi_preset_maps_membrane_to_the_positive_class():
    cfg = compose_cfg(["experiment=isbi_membrane"])
    assert cfg.data.label_map == {255: 0, 0: 1}
    assert list(cfg.data.class_names) == ["cell", "membrane"]
    assert cfg.data.in_channels == 1


def test_label_map_override_from_the_command_line():
    cfg = compose_cfg(["data.label_map={0:0,255:1}"])
    assert dict(cfg.data.label_map) == {0: 0, 255: 1}


def test_wandb_run_identity_comes_from_the_hydra_choices():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = ["model=fcn", "loss=wce", "seed=3", "experiment=compare_losses"]
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        identity = run_identity(cfg)
    finally:
        HydraConfig.instance().cfg = None
    assert identity == {
        "name": "fcn8s-wce-s3",
        "group": "model=fcn loss=wce experiment=compare_losses",  # the overrides but the seed: its seeds together
        "job_type": "train",
        "tags": ["model:fcn8s", "loss:wce", "data:synthetic"],
    }


def test_a_group_name_too_long_for_wandb_is_cut_and_kept_unique():
    long = [f"data.root=/a/very/long/path/number/{i}" for i in range(6)]
    first, second = seedless_group([*long, "loss=ce"]), seedless_group([*long, "loss=dice"])
    assert len(first) <= 128 and first != second
    assert seedless_group(["seed=3", "+seeds=2", "hydra.job.chdir=false"]) == "defaults"


def test_seeds_become_the_sweeps_seed_values_from_seed_on():
    assert seed_values(0, 3) == "range(0,3)" and seed_values(5, 2) == "range(5,7)"
    for wrong in (0, -1, "3", True, None):
        with pytest.raises(ConfigError, match=r"seeds=.*: give a number of seeds"):
            seed_values(0, wrong)


def test_configs_find_the_files_semseg_ships_with():
    cfg = compose_cfg(["experiment=camvid_budget", "data.root=/data/camvid"])
    lists = OmegaConf.to_container(cfg.data.split_files, resolve=True)
    assert {split: Path(path).name for split, path in lists.items()} == {
        s: f"{s}.csv" for s in ("train", "val", "test")
    }
    held_out = Path(lists["test"]).read_text().splitlines()[1:]
    trained = Path(lists["train"]).read_text()
    assert len(held_out) == 101 and all(line.startswith("images/train/0006R0_") for line in held_out)
    assert "0006R0" not in trained  # the development sequence is never trained on
    with pytest.raises(ConfigError, match="no file"):
        conf_file("splits/none.csv")
