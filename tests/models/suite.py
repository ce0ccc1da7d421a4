"""The generic model test suite (smp style): each per-model file subclasses ``ModelSuite``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from semseg.models import SegmentationNet, build_model


class ModelSuite:
    """Behaviour every architecture must have, whatever its encoder and decoder.

    Subclasses set ``cfg`` (the ``model`` config) and ``params_millions`` (the expected parameter
    count range for ``NUM_CLASSES`` classes and 3 input channels).
    """

    cfg: ClassVar[dict]
    params_millions: ClassVar[tuple[float, float]]
    NUM_CLASSES = 3

    def build(self, in_channels: int = 3, **overrides) -> SegmentationNet:
        return build_model({"encoder_weights": None} | self.cfg | overrides, in_channels, self.NUM_CLASSES)

    @pytest.mark.parametrize("size", [(64, 64), (17, 23), (360, 480)])
    def test_output_size_equals_input_size(self, size):
        net = self.build().eval()
        with torch.no_grad():
            logits = net(torch.randn(1, 3, *size))
        assert logits.shape == (1, self.NUM_CLASSES, *size)
        assert torch.isfinite(logits).all()

    def test_forward_backward_reaches_every_parameter(self):
        net = self.build().train()
        logits = net(torch.randn(2, 3, 64, 64))
        F.cross_entropy(logits, torch.randint(0, self.NUM_CLASSES, (2, 64, 64))).backward()
        unreached = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
        assert not unreached
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)

    @pytest.mark.parametrize("in_channels", [1, 4])
    def test_other_input_channels(self, in_channels):
        net = self.build(in_channels).eval()
        with torch.no_grad():
            assert net(torch.randn(1, in_channels, 40, 40)).shape == (1, self.NUM_CLASSES, 40, 40)

    def test_save_load_round_trip(self, tmp_path: Path):
        torch.manual_seed(0)
        net = self.build().eval()
        torch.save(net.state_dict(), tmp_path / "net.pt")
        torch.manual_seed(1)
        loaded = self.build().eval()
        loaded.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
        x = torch.randn(1, 3, 48, 48)
        with torch.no_grad():
            assert torch.equal(net(x), loaded(x))

    def test_local_encoder_weights_file_loads_into_this_architecture(self, tmp_path: Path):
        source = self.build()
        torch.save(source.architecture.encoder.state_dict(), tmp_path / "encoder.pth")
        loaded = self.build(in_channels=4, encoder_weights=str(tmp_path / "encoder.pth"))
        before, after = source.architecture.encoder.state_dict(), loaded.architecture.encoder.state_dict()
        adapted = [key for key in before if before[key].shape != after[key].shape]
        assert len(adapted) == 1  # the first convolution, adapted to 4 input channels
        assert all(torch.equal(before[key], after[key]) for key in before if key not in adapted)

    def test_channels_last_gives_the_same_logits(self):
        torch.manual_seed(0)
        plain = self.build().eval()
        nhwc = self.build(channels_last=True).eval()
        nhwc.load_state_dict(plain.state_dict())
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(nhwc(x), plain(x), rtol=1e-4, atol=1e-4)

    def test_parameter_count(self):
        low, high = self.params_millions
        assert low <= sum(p.numel() for p in self.build().parameters()) / 1e6 <= high
