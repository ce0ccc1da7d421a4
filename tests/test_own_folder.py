"""`data.root=<folder>` alone: one's own folder trains as data=folder would; nothing is generated
into it, and no message advises deleting it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from semseg.data.synthetic import MANIFEST, own_folder_groups, own_folder_or_synthetic
from semseg.errors import DataError
from semseg.training.train import train
from tests.conftest import CHEAP, compose_cfg


@pytest.fixture(scope="module")
def own_root(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's image-mask folder: the tiny set's files, without the generator's manifest."""
    root = tmp_path_factory.mktemp("own") / "roads"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns(MANIFEST))
    return root


def _data(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_cfg(list(overrides)).data, resolve=True)


def test_data_root_alone_reads_ones_own_folder_as_data_folder_does(own_root: Path):
    alone = own_folder_or_synthetic(_data(f"data.root={own_root}", "data.num_classes=5"))
    folder = _data("data=folder", f"data.root={own_root}", "data.num_classes=5")
    assert alone == folder
    assert alone["synthetic"] is None and alone["class_names"] is None
    assert sorted(path.name for path in own_root.iterdir()) == ["images", "masks"]  # nothing written
    groups = ("loss", "optimizer")
    synthetic = OmegaConf.to_container(compose_cfg([f"data.root={own_root}"]))
    folder = OmegaConf.to_container(compose_cfg(["data=folder"]))
    assert own_folder_groups(synthetic) == {g: folder[g] for g in groups}
    assert all(synthetic[g] != folder[g] for g in groups)  # data=synthetic keeps its own loss and optimizer
    chosen = ["loss=dice", "optimizer.weight_decay=0.01"]
    synthetic = OmegaConf.to_container(compose_cfg([f"data.root={own_root}", *chosen]))
    folder = OmegaConf.to_container(compose_cfg(["data=folder", *chosen]))
    assert own_folder_groups(synthetic, chosen) == {g: folder[g] for g in groups}


def test_own_class_names_and_augmentation_are_kept(own_root: Path):
    chosen = [f"data.root={own_root}", "data.class_names=[road,car,sky,tree,sign]", "augment=rotations"]
    data = own_folder_or_synthetic(_data(*chosen), chosen)
    assert data["class_names"] == ["road", "car", "sky", "tree", "sign"]
    assert data["augment"] == _data("augment=rotations")["augment"]


def test_the_generated_set_stays_the_synthetic_default(tiny_root: Path):
    data = _data(f"data.root={tiny_root}")
    assert own_folder_or_synthetic(data) == data


def test_a_missing_root_with_ones_own_class_count_is_a_path_error_not_a_new_synthetic_set(tmp_path: Path):
    missing = tmp_path / "raods"
    with pytest.raises(DataError) as error:
        own_folder_or_synthetic(_data(f"data.root={missing}", "data.num_classes=11"))
    assert f"data.root={missing} does not exist" in str(error.value) and "check the path" in str(error.value)
    assert "delete" not in str(error.value).lower()
    assert not missing.exists()


def test_training_on_data_root_alone_names_classes_and_suggests_pretrained_weights(
    own_root: Path, tmp_path: Path, caplog
):
    cfg = compose_cfg([*CHEAP, f"data.root={own_root}", "run_test=false"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "run")
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    assert "val/iou/class_4" in metrics and "val/iou/speck" not in metrics
    assert cfg.loss.class_weights == "auto" and cfg.optimizer.lr == 1e-3  # data=folder's recipe
    assert "is not a generated data set" in caplog.text
    assert caplog.text.count("model.encoder_weights=imagenet") == 1
    assert "delete" not in caplog.text.lower()
    assert not (own_root / MANIFEST).exists()
