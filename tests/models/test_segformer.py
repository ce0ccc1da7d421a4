"""SegFormer: the generic suite on MiT-B0, and the paper's decoder widths and size."""

import pytest

from semseg.models import architecture_kwargs, build_model
from tests.models.suite import ModelSuite


class TestSegformerB0(ModelSuite):
    cfg = {"arch": "segformer", "encoder_name": "mit_b0"}
    params_millions = (3.70, 3.72)


@pytest.mark.parametrize(("encoder", "width"), [("mit_b0", 256), ("mit_b1", 256), ("mit_b2", 768), ("mit_b5", 768)])
def test_decoder_width_follows_the_paper(encoder, width):
    assert architecture_kwargs({"arch": "segformer", "encoder_name": encoder})["decoder_segmentation_channels"] == width


def test_b0_has_the_papers_parameter_count():
    # Xie et al. 2021, Table 1: SegFormer-B0 has 3.8M parameters (ADE20K, 150 classes).
    net = build_model({"arch": "segformer", "encoder_name": "mit_b0", "encoder_weights": None}, 3, 150)
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(3.8, abs=0.1)
