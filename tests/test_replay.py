"""A run's saved config replays it: composed again from .hydra/config.yaml (what Hydra's
``--config-dir <run>/.hydra --config-name config`` does), it trains the same model to the same
val/miou, and the checkpoint's hyper-parameters hold the same config. The own-data command's
replay through the command line itself: tests/test_own_folder.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from semseg.data.synthetic import MANIFEST
from semseg.training.train import train
from tests.conftest import CHEAP, compose_cfg

RECORDED = ("loss", "optimizer", "param_groups", "scheduler", "inference")


def _replayed(config_dir: Path, output_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name="config")
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)  # Hydra's hydra.run.dir
    return cfg


def _assert_checkpoint_holds(run: Path, cfg: DictConfig) -> None:
    hparams = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in RECORDED:
        assert hparams[key] == config[key], key
    assert hparams["data"] == config["data"] | {"root": str(Path(config["data"]["root"]).resolve())}


def _val_miou(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["val/miou"]


def test_the_default_recipes_saved_config_replays_its_run(trained_run: Path, tmp_path: Path):
    """``trained_run``: scripts/train.py data=synthetic (what ``make train`` runs), made cheap."""
    cfg = _replayed(trained_run / ".hydra", tmp_path / "replay")
    _assert_checkpoint_holds(trained_run, cfg)
    train(cfg)
    assert _val_miou(tmp_path / "replay") == pytest.approx(_val_miou(trained_run), abs=1e-6)


def test_an_experiment_presets_saved_config_replays_its_run(tiny_root: Path, tmp_path: Path):
    root = tmp_path / "roads"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns(MANIFEST))
    overrides = ["experiment=camvid", f"data.root={root}", "data.num_classes=5", "data.ignore_index=null",
                 "data.class_names=[a,b,c,d,e]", "data.image_size=[32,32]", *CHEAP, "run_test=false"]  # fmt: skip
    cfg = compose_cfg(overrides)
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "run")
    saved = tmp_path / "saved"
    saved.mkdir()
    OmegaConf.save(cfg, saved / "config.yaml")  # as Hydra saves it, before the run
    train(cfg)
    _assert_checkpoint_holds(tmp_path / "run", cfg)
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(OmegaConf.load(saved / "config.yaml"))  # untouched
    train(_replayed(saved, tmp_path / "replay"))
    assert _val_miou(tmp_path / "replay") == pytest.approx(_val_miou(tmp_path / "run"), abs=1e-6)
