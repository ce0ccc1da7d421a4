"""FCN-32s/16s/8s: the generic suite plus the paper's structure and initialisation."""

import pytest
import torch
import torch.nn.functional as F

from semseg.errors import ConfigError
from semseg.models import build_model
from semseg.models.fcn import bilinear_upsampling_kernel
from tests.models.suite import ModelSuite

# ResNet-18 (11.18M) + fc6 3x3 512->512 (2.36M) + fc7 1x1 512->512 (0.26M) + BN and scores.
FCN32_MILLIONS = (13.79, 13.81)


class TestFCN32s(ModelSuite):
    cfg = {"arch": "fcn", "variant": "32s", "encoder_name": "resnet18"}
    params_millions = FCN32_MILLIONS


class TestFCN16s(ModelSuite):
    cfg = {"arch": "fcn", "variant": "16s", "encoder_name": "resnet18"}
    params_millions = FCN32_MILLIONS


class TestFCN8s(ModelSuite):
    cfg = {"arch": "fcn", "variant": "8s", "encoder_name": "resnet18"}
    params_millions = FCN32_MILLIONS


def fcn(variant: str, classes: int = 3):
    return build_model({"arch": "fcn", "variant": variant, "encoder_name": "resnet18"}, 3, classes).architecture


@pytest.mark.parametrize(("variant", "stride"), [("32s", 32), ("16s", 16), ("8s", 8)])
def test_scores_are_fused_at_the_variants_stride(variant, stride):
    net = fcn(variant).eval()
    with torch.no_grad():
        scores = net.decoder(net.encoder(torch.randn(1, 3, 64, 96)))
    assert scores.shape == (1, 3, 64 // stride, 96 // stride)


def test_each_finer_variant_adds_a_1x1_score_layer_and_a_2x_upsampling():
    k = 3  # classes
    counts = {v: sum(p.numel() for p in fcn(v, k).parameters()) for v in ("32s", "16s", "8s")}
    # ResNet-18's stride-16 features have 256 channels, its stride-8 features 128.
    assert counts["16s"] - counts["32s"] == (256 * k + k) + k * k * 4 * 4
    assert counts["8s"] - counts["16s"] == (128 * k + k) + k * k * 4 * 4


def test_fusion_layers_start_as_in_the_paper():
    net = fcn("8s")
    assert all(torch.count_nonzero(p) == 0 for p in net.decoder.skip_scores.parameters())
    x = torch.randn(1, 3, 8, 8)
    for upsample in net.decoder.upsample2x:  # bilinear interpolation (away from the border)
        expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(upsample(x)[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])


def test_bilinear_kernel_is_separable_and_normalised():
    kernel = bilinear_upsampling_kernel(1, 2)[0, 0]
    assert kernel.shape == (4, 4)
    torch.testing.assert_close(kernel[0], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.25)
    assert kernel.sum() == pytest.approx(4.0)  # 2x2 outputs per input pixel, each weight summing to 1


def test_unknown_variant_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"32s, 16s, 8s"):
        fcn("4s")


def test_an_encoder_depth_fcn_cannot_use_is_refused_with_the_reason():
    cfg = {"arch": "fcn", "encoder_name": "resnet18", "encoder_weights": None, "kwargs": {"encoder_depth": 3}}
    with pytest.raises(ConfigError, match=r"model.arch=fcn .*encoder_depth=3: FCN scores the stride-32 features"):
        build_model(cfg, in_channels=3, num_classes=2)
