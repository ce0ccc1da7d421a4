"""experiment=camvid and experiment=camvid_gpu compose as documented and train a few steps on a
tiny folder laid out like CamVid (11 classes, void stored as 11)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from semseg.training.train import train
from tests.conftest import CHEAP, CONF_DIR, compose_cfg

CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
                  "bicyclist"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_camvid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48x64 frames whose masks hold every class 0..10 and void (11) in horizontal bands."""
    root = tmp_path_factory.mktemp("camvid")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for folder in ("images", "masks"):
            (root / folder / split).mkdir(parents=True)
        for i in range(count):
            mask = np.repeat(np.arange(12, dtype=np.uint8), 4)[:, None].repeat(64, axis=1)
            image = (mask[..., None] * 20 + rng.integers(0, 20, (48, 64, 3))).astype(np.uint8)
            cv2.imwrite(str(root / "images" / split / f"{split}_{i}.png"), image)
            cv2.imwrite(str(root / "masks" / split / f"{split}_{i}.png"), mask)
    return root


def test_the_camvid_presets_say_what_the_docs_say():
    cpu = compose_cfg(["experiment=camvid"])
    assert (cpu.data.num_classes, cpu.data.ignore_index, list(cpu.data.class_names)) == (11, 11, CAMVID_CLASSES)
    assert list(cpu.data.image_size) == [192, 256] and cpu.data.root == "data/camvid"
    gpu = compose_cfg(["experiment=camvid_gpu"])
    assert gpu.data.image_size is None and gpu.trainer.accelerator == "gpu" and gpu.model.channels_last
    assert [a["_target_"] for a in gpu.data.augment][1] == "albumentations.Affine"  # augment=street


@pytest.mark.parametrize("preset", ["camvid", "camvid_gpu"])
def test_the_camvid_presets_train_a_few_steps(preset: str, tiny_camvid: Path, tmp_path: Path):
    cfg = compose_cfg([f"experiment={preset}", *CHEAP, f"data.root={tiny_camvid}", "data.image_size=[48,64]",
                       "trainer.limit_train_batches=2", "trainer.check_val_every_n_epoch=1"])  # fmt: skip
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "run")
    metrics = train(cfg)
    assert 0.0 <= metrics["val/miou"] <= 1.0
    assert {f"val/iou/{name}" for name in CAMVID_CLASSES} <= set(metrics)  # void (11) is ignored, not a class


def test_the_baseline_loop_trains_and_scores_the_val_split(tiny_camvid: Path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "baseline_loop.py"
    args = ["--root", str(tiny_camvid), "--num-classes", "11", "--ignore-index", "11", "--size", "48", "64",
            "--epochs", "1", "--batch-size", "2"]  # fmt: skip
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0.0 <= scores["val/miou"] <= 1.0 and 0.0 <= scores["val/pixel_acc"] <= 1.0
    assert len(scores["val/iou"]) == 11 and scores["wall_clock_s"] > 0  # void (11) is ignored, not scored
    assert scores["train_images"] == 4 and scores["train_s"] > 0  # one epoch of the 4 frames


@pytest.mark.parametrize("preset", ["camvid_skips", "camvid_losses", "camvid_architectures"])
def test_the_camvid_comparisons_sweep_what_the_docs_say(preset: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={preset}"], return_hydra_config=True)
    swept = dict(cfg.hydra.sweeper.params)
    assert cfg.seeds == 3 and len(swept) == 1  # each option over three seeds (RepeatOverSeeds)
    assert cfg.data.split_files.test.endswith("splits/camvid_dev/test.csv")  # a training sequence held out
    assert list(cfg.data.image_size) == [144, 192] and cfg.trainer.max_epochs == 3
    for option in next(iter(swept.values())).split(","):  # every swept option composes
        compose_cfg([f"experiment={preset}", f"{next(iter(swept))}={option}"])
    assert compose_cfg(["experiment=camvid_skips", "model=fcn32s"]).model.variant == "32s"
