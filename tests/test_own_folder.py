"""`data.root=<folder>` alone: one's own folder trains with data=folder's recipe, composed by Hydra
(the default data group), so the saved config is what trained; the embedded set is data=synthetic;
nothing is ever generated into one's own folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf, open_dict

from semseg.data.synthetic import MANIFEST
from semseg.errors import ConfigError, DataError
from semseg.reporting.figures import prediction_grid_figure
from semseg.reporting.leaderboard import find_runs
from semseg.run_folder import checkpoint_epoch
from semseg.training.train import train
from tests.conftest import CHEAP, CONF_DIR, compose_cfg
from tests.figures import assert_readable

TRAIN = CONF_DIR.parent / "scripts" / "train.py"


@pytest.fixture(scope="module")
def own_root(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's image-mask folder: the tiny set's files, without the generator's manifest."""
    root = tmp_path_factory.mktemp("own") / "roads"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns(MANIFEST))
    return root


@pytest.fixture(scope="module")
def own_run(own_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's own-data command, cheap: ``scripts/train.py data.root=<folder> data.num_classes=5``."""
    run = tmp_path_factory.mktemp("own_run") / "run"
    command = [sys.executable, str(TRAIN), *CHEAP, f"data.root={own_root}", "data.num_classes=5",
               f"hydra.run.dir={run}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return run


def _composed(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_cfg(list(overrides)))


def test_data_root_alone_composes_data_folder(own_root: Path):
    given = [f"data.root={own_root}", "data.num_classes=5"]
    assert _composed(*given) == _composed("data=folder", *given)
    folder = _composed(*given)
    assert folder["loss"]["class_weights"] == "auto" and folder["optimizer"]["lr"] == 1e-3  # data=folder's recipe
    assert folder["data"]["class_names"] is None and folder["data"]["synthetic"] is None
    synthetic = _composed("data=synthetic")
    assert synthetic["loss"]["terms"] == {"ce": 1.0, "dice": 1.0} and synthetic["optimizer"]["lr"] == 3e-3


def test_the_saved_config_is_what_trained_and_the_report_reads_it(own_run: Path, own_root: Path):
    saved = yaml.safe_load((own_run / ".hydra" / "config.yaml").read_text())
    hparams = torch.load(own_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)[
        "hyper_parameters"
    ]
    for key in ("loss", "optimizer", "param_groups", "scheduler", "inference"):
        assert hparams[key] == saved[key], key
    assert hparams["loss"]["class_weights"] == "auto" and len(hparams["class_weights"]) == 5  # counted from masks
    assert hparams["data"] == saved["data"] | {"root": str(own_root.resolve())}
    assert hparams["data"]["augment"] == [{"_target_": "albumentations.HorizontalFlip", "p": 0.5}]
    assert hparams["class_names"] == [f"class_{i}" for i in range(5)]  # data.class_names: null
    assert sorted(path.name for path in own_root.iterdir()) == ["images", "masks"]  # nothing written into it
    (run,) = find_runs(own_run)
    assert run.choices["loss"] == "wce" and run.choices["data"] == "folder"
    fig, notes = prediction_grid_figure([run], num_images=2)
    assert notes == [] and fig is not None
    epoch = checkpoint_epoch(own_run / "checkpoints" / "best.ckpt")
    assert_readable(fig, f"val, epoch {epoch}, best.ckpt", [f"class_{i}" for i in range(5)])


def test_hydras_replay_of_the_saved_config_trains_the_same_model(own_run: Path, tmp_path: Path):
    replay = tmp_path / "replay"
    command = [sys.executable, str(TRAIN), "--config-dir", str(own_run / ".hydra"), "--config-name", "config",
               f"hydra.run.dir={replay}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    first, again = (json.loads((run / "metrics.json").read_text()) for run in (own_run, replay))
    assert again["val/miou"] == pytest.approx(first["val/miou"], abs=1e-6)
    assert (replay / ".hydra" / "config.yaml").read_text() == (own_run / ".hydra" / "config.yaml").read_text()


def test_without_a_data_set_the_error_names_the_keys_and_the_embedded_set(tmp_path: Path):
    cfg = compose_cfg(CHEAP)
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data.root and data.num_classes are not set.*data=synthetic"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_data_synthetic_never_writes_into_ones_own_folder(own_root: Path, tmp_path: Path):
    cfg = compose_cfg([*CHEAP, "data=synthetic", f"data.root={own_root}"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "run")
    with pytest.raises(DataError, match=r"not the generated data set.*with data=folder \(the default\)") as error:
        train(cfg)
    assert "delete" not in str(error.value).lower()
    assert sorted(path.name for path in own_root.iterdir()) == ["images", "masks"]


def test_data_synthetic_with_another_class_count_is_refused_before_generating(tmp_path: Path):
    missing = tmp_path / "raods"
    cfg = compose_cfg([*CHEAP, "data=synthetic", f"data.root={missing}", "data.num_classes=11"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "run")
    with pytest.raises(DataError, match=r"data=synthetic generates 5 classes.*data.num_classes=11"):
        train(cfg)
    assert not missing.exists()
