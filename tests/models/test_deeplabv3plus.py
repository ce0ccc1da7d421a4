"""DeepLabV3+: the generic suite at output stride 16 and 8, and the paper's atrous rates."""

import pytest

from semseg.errors import ConfigError
from semseg.models import architecture_kwargs, build_model
from tests.models.suite import ModelSuite


class TestDeepLabV3PlusStride16(ModelSuite):
    cfg = {"arch": "deeplabv3plus", "encoder_name": "resnet18", "output_stride": 16}
    params_millions = (12.3, 12.4)


class TestDeepLabV3PlusStride8(ModelSuite):
    cfg = {"arch": "deeplabv3plus", "encoder_name": "resnet18", "output_stride": 8}
    params_millions = (12.3, 12.4)  # dilation changes the compute, not the weights


@pytest.mark.parametrize(("stride", "rates"), [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_default_atrous_rates_follow_the_output_stride(stride, rates):
    cfg = {"arch": "deeplabv3plus", "encoder_name": "resnet18", "output_stride": stride}
    assert architecture_kwargs(cfg)["decoder_atrous_rates"] == rates
    net = build_model(cfg, 3, 2)
    assert net.stride == stride == net.architecture.encoder.output_stride
    aspp = net.architecture.decoder.aspp[0]
    dilations = [branch[0][0].dilation[0] for branch in list(aspp.convs)[1:4]]
    assert dilations == list(rates)


def test_configured_rates_are_used():
    cfg = {"arch": "deeplabv3plus", "encoder_name": "resnet18", "atrous_rates": [2, 4, 6]}
    assert architecture_kwargs(cfg)["decoder_atrous_rates"] == (2, 4, 6)


def test_unsupported_output_stride_is_refused():
    with pytest.raises(ConfigError, match="8 or 16"):
        architecture_kwargs({"arch": "deeplabv3plus", "encoder_name": "resnet18", "output_stride": 32})
