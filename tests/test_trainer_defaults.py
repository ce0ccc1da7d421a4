"""The Trainer defaults a GPU user gets unasked, and what the CPU keeps."""

from __future__ import annotations

import pytest
import torch

from semseg.trainer_defaults import trainer_kwargs
from tests.conftest import compose_cfg


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """A CUDA GPU with bfloat16, as far as trainer_kwargs can tell (no kernel runs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    previous = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(previous)


def test_the_cpu_trains_in_fp32_without_autotuning(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_cfg(["data.crop_size=[32,32]"])
    kwargs = trainer_kwargs(cfg.trainer, cfg.data)
    assert kwargs["precision"] == "32-true" and kwargs["benchmark"] is None
    assert kwargs["max_epochs"] == cfg.trainer.max_epochs  # everything else passes through


def test_a_gpu_gets_bf16_tf32_and_autotuning_for_fixed_size_batches(fake_gpu):
    cfg = compose_cfg(["data.crop_size=[32,32]"])
    kwargs = trainer_kwargs(cfg.trainer, cfg.data)
    assert kwargs["precision"] == "bf16-mixed" and kwargs["benchmark"] is True
    assert torch.get_float32_matmul_precision() == "high"
    # Batches of varying size would make cuDNN re-tune at each new shape.
    assert trainer_kwargs(cfg.trainer, compose_cfg(["data.crop_size=null"]).data)["benchmark"] is None


def test_explicit_choices_and_determinism_win_over_the_defaults(fake_gpu):
    cfg = compose_cfg(["data.crop_size=[32,32]", "trainer.precision=16-mixed", "trainer.benchmark=false"])
    kwargs = trainer_kwargs(cfg.trainer, cfg.data)
    assert kwargs["precision"] == "16-mixed" and kwargs["benchmark"] is False
    deterministic = compose_cfg(["data.crop_size=[32,32]", "trainer.deterministic=true"])
    assert trainer_kwargs(deterministic.trainer, deterministic.data)["benchmark"] is None
    cpu = compose_cfg(["trainer=cpu", "data.crop_size=[32,32]"])
    assert trainer_kwargs(cpu.trainer, cpu.data)["precision"] == "32-true"  # asked for the CPU
