"""Every smp architecture is reachable by name through model=smp model.arch=<name>."""

import pytest

from semseg.models import ARCHITECTURES, architecture_kwargs
from tests.conftest import compose_cfg
from tests.models.suite import ModelSuite


def test_the_smp_config_takes_any_registered_architecture():
    cfg = compose_cfg(["model=smp", "model.arch=upernet"]).model
    assert cfg.arch == "upernet" and cfg.encoder_name == "resnet18"
    assert {"unet", "deeplabv3plus", "segformer", "upernet", "fpn", "pspnet", "fcn"} <= set(ARCHITECTURES)


def test_model_kwargs_reach_the_constructor_and_win():
    assert architecture_kwargs({"arch": "segformer", "encoder_name": "mit_b0", "kwargs": {"upsampling": 2}}) == {
        "decoder_segmentation_channels": 256,
        "upsampling": 2,
    }


@pytest.mark.parametrize("arch", ["pspnet", "linknet"])
def test_other_architectures_take_odd_sizes(arch):
    class Suite(ModelSuite):
        cfg = {"arch": arch, "encoder_name": "resnet18"}

    Suite().test_output_size_equals_input_size((37, 45))
