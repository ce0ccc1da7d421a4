from tests.models.suite import ModelSuite


class TestUnet(ModelSuite):
    cfg = {"arch": "unet", "encoder_name": "resnet18"}
    params_millions = (14.3, 14.4)  # ResNet-18 (11.2M) + smp's default 5-stage decoder
