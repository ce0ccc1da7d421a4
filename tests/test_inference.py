"""Tiled and test-time-augmented inference against whole-image inference."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from semseg.errors import ConfigError
from semseg.inference.tiling import InferenceSettings, blend_weights, predict_logits, tile_starts
from tests.conftest import CONF_DIR, compose_cfg


class Pointwise(nn.Module):
    """A 1x1 convolution: every pixel's logits depend on that pixel only, so tiling, flipping and
    blending must reproduce the whole-image prediction exactly. Records the input sizes it saw."""

    def __init__(self, channels: int = 3, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, classes, 1)
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[-2:]))
        return self.conv(x)


def settings(**kwargs) -> InferenceSettings:
    return InferenceSettings.from_config(kwargs)


@pytest.mark.parametrize(("length", "tile", "overlap"), [(100, 32, 0.25), (64, 32, 0.0), (33, 32, 0.5), (20, 32, 0.25)])
def test_tiles_cover_the_side_and_end_flush(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = torch.zeros(length, dtype=torch.bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered.all()
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    assert starts == sorted(set(starts))


def test_blend_weights_are_positive_and_fall_towards_the_edges():
    weights = blend_weights(16, 16, (4, 4), torch.device("cpu"))
    assert (weights > 0).all()
    assert weights[8, 8] == 1.0 and weights[0, 0] < weights[2, 2] < weights[4, 4]


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_tiled_prediction_equals_the_whole_image(overlap):
    net = Pointwise()
    images = torch.randn(2, 3, 70, 90)
    whole = predict_logits(net, images, settings()).softmax(1)
    net.seen.clear()
    tiled = predict_logits(net, images, settings(tile_size=[32, 32], tile_overlap=overlap)).softmax(1)
    assert torch.allclose(tiled, whole, atol=1e-5)
    # The network never saw more than a tile.
    assert max(h for h, _ in net.seen) <= 32 and max(w for _, w in net.seen) <= 32


def test_an_image_no_larger_than_the_tile_is_seen_whole():
    net = Pointwise()
    images = torch.randn(1, 3, 30, 32)
    assert torch.equal(predict_logits(net, images, settings(tile_size=[32, 32])), net.conv(images))


def test_flips_are_undone_before_averaging():
    # A pointwise net commutes with flips: TTA must give the plain prediction back. A view left
    # flipped would put each pixel's prediction on its mirror pixel.
    net = Pointwise()
    images = torch.randn(1, 3, 24, 40)
    plain = net.conv(images).softmax(1)
    flipped = predict_logits(net, images, settings(flips=["horizontal", "vertical"])).softmax(1)
    assert torch.allclose(flipped, plain, atol=1e-5)
    assert len(net.seen) == 3  # the image, its horizontal and its vertical flip


def test_scales_are_resized_back_and_averaged():
    net = Pointwise()
    images = torch.randn(1, 3, 24, 40)
    scores = predict_logits(net, images, settings(scales=[0.5, 1.0, 2.0]))
    assert scores.shape == (1, 4, 24, 40)
    assert sorted(net.seen) == [(12, 20), (24, 40), (48, 80)]
    probabilities = scores.exp()
    assert torch.allclose(probabilities.sum(1), torch.ones(1, 24, 40), atol=1e-4)


def test_tta_composes_with_tiling():
    net = Pointwise()
    images = torch.randn(1, 3, 50, 70)
    plain = net.conv(images).softmax(1)
    both = predict_logits(net, images, settings(tile_size=[32, 32], flips=["horizontal"])).softmax(1)
    assert torch.allclose(both, plain, atol=1e-5)
    assert max(max(size) for size in net.seen) <= 32


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tile_size", [0, 32]),
        ("tile_overlap", 1.0),
        ("flips", ["diagonal"]),
        ("scales", [0.0]),
        ("tile_batch_size", 0),
        ("tiles", 3),
    ],
)
def test_bad_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"inference.{key}"):
        InferenceSettings.from_config({key: value})


def test_whole_yaml_lists_the_settings_defaults():
    """conf/inference/whole.yaml (what users read) and the dataclass (what code falls back on) agree."""
    listed = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "inference" / "whole.yaml"))
    as_settings = {key: tuple(value) if isinstance(value, list) else value for key, value in listed.items()}
    assert as_settings == asdict(InferenceSettings())
    assert InferenceSettings.from_config(listed) == InferenceSettings()


@pytest.mark.parametrize("option", sorted({p.stem for p in (CONF_DIR / "inference").glob("*.yaml")} - {"whole"}))
def test_inference_options_extend_whole(option):
    """Every other option states only what it changes; whole.yaml gives the rest."""
    own = OmegaConf.load(CONF_DIR / "inference" / f"{option}.yaml")
    assert list(own.pop("defaults")) == ["whole", "_self_"]
    composed = OmegaConf.to_container(compose_cfg([f"inference={option}"]).inference)
    whole = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "inference" / "whole.yaml"))
    assert composed == whole | OmegaConf.to_container(own)
    assert all(whole[key] != value for key, value in own.items())
