"""Model factory: local and hub encoder weights, normalisation, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import semseg.models.weights as weights
from semseg.errors import ConfigError
from semseg.models import build_model, encoder_normalization

TINY = {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None}


def test_local_encoder_weights_are_loaded_and_adapted_to_one_channel(tmp_path: Path):
    source = build_model(TINY, in_channels=3, num_classes=2)
    path = tmp_path / "encoder.pth"
    torch.save(source.architecture.encoder.state_dict(), path)
    loaded = build_model(TINY | {"encoder_weights": str(path)}, in_channels=1, num_classes=2)
    loaded_encoder, source_encoder = loaded.architecture.encoder, source.architecture.encoder
    assert torch.equal(loaded_encoder.layer4[0].conv1.weight, source_encoder.layer4[0].conv1.weight)
    # smp's adaptation for one channel: the RGB filters summed.
    assert torch.allclose(loaded_encoder.conv1.weight, source_encoder.conv1.weight.sum(1, keepdim=True))


def test_a_whole_model_state_dict_also_works(tmp_path: Path):
    source = build_model(TINY, in_channels=3, num_classes=2)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": source.architecture.state_dict()}, path)
    loaded = build_model(TINY | {"encoder_weights": str(path)}, in_channels=3, num_classes=2)
    assert torch.equal(loaded.architecture.encoder.conv1.weight, source.architecture.encoder.conv1.weight)


def test_missing_weights_file_says_how_to_train_from_scratch(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"no such file.*null to train from scratch"):
        build_model(TINY | {"encoder_weights": str(tmp_path / "nope.pth")}, 3, 2)


def test_imagenet_offline_and_uncached_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setattr(weights, "can_reach", lambda host: False)
    monkeypatch.setattr(weights, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(ConfigError, match=r"cannot be reached.*encoder_weights=null.*local weights file"):
        build_model(TINY | {"encoder_weights": "imagenet"}, 3, 2)


@pytest.mark.parametrize(
    ("key", "value", "listed"), [("arch", "unett", "unet"), ("encoder_name", "resnet1", "resnet18")]
)
def test_unknown_names_list_the_valid_ones(key, value, listed):
    with pytest.raises(ConfigError, match=listed):
        build_model(TINY | {key: value}, 3, 2)


def test_normalization_follows_the_input_channels():
    mean, _ = encoder_normalization(TINY, in_channels=1)
    assert mean == [pytest.approx((0.485 + 0.456 + 0.406) / 3)]
    mean4, _ = encoder_normalization(TINY, in_channels=4)
    assert mean4 == [0.485, 0.456, 0.406, 0.485]


def test_weights_saved_under_the_old_attribute_name_still_load():
    """Checkpoints from before ``SegmentationNet.architecture`` was named so hold ``net.*`` keys."""
    cfg = {"arch": "unet", "encoder_name": "resnet18", "encoder_weights": None, "decoder_channels": [16, 8, 8, 8, 8]}
    trained, fresh = build_model(cfg, 3, 2), build_model(cfg, 3, 2)
    old = {key.replace("architecture.", "net.", 1): value for key, value in trained.state_dict().items()}
    assert all(key.startswith("net.") for key in old)
    fresh.load_state_dict(old)
    image = torch.rand(1, 3, 32, 32)
    assert torch.equal(fresh.eval()(image), trained.eval()(image))
