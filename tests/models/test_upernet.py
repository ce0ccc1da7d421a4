"""UPerNet (model=upernet): smp's UPerNet over a CNN and over a hierarchical transformer."""

import torch
from omegaconf import OmegaConf

from semseg.models import build_model, count_parameters
from tests.conftest import compose_cfg
from tests.models.suite import ModelSuite


class TestUperNet(ModelSuite):
    cfg = {"arch": "upernet", "encoder_name": "resnet18", "decoder_channels": 256}
    params_millions = (19.4, 19.6)


def test_the_config_builds_the_pyramid_width_it_names():
    cfg = OmegaConf.to_container(compose_cfg(["model=upernet", "model.decoder_channels=64"]).model)
    net = build_model(cfg | {"encoder_name": "tu-test_resnet"}, 3, 5)
    assert net.architecture.segmentation_head[0].in_channels == 64


def test_on_segformers_transformer_encoder_any_size_works():
    cfg = OmegaConf.to_container(compose_cfg(["model=upernet", "model.encoder_name=mit_b0"]).model)
    net = build_model(cfg, 3, 4).eval()
    assert 10e6 < count_parameters(net) < 11e6  # MiT-B0 (3.3 M) under a 256-wide pyramid (7.4 M)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 45, 70)).shape == (1, 4, 45, 70)
