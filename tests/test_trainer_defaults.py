"""The Trainer defaults a GPU user gets unasked, and what the CPU keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semseg.errors import ConfigError
from semseg.trainer_defaults import trainer_kwargs
from semseg.training.train import train
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


def test_asking_for_absent_gpus_is_a_config_error_naming_the_key_and_the_fix(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(
        ConfigError, match=r"trainer.accelerator=gpu .* no CUDA GPU \(CUDA_VISIBLE_DEVICES=''\).*Fix: trainer=cpu"
    ):
        trainer_kwargs(compose_cfg(["trainer=gpu"]).trainer)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # Apple's GPU: Lightning's "gpu" too
    assert trainer_kwargs(compose_cfg(["trainer=gpu"]).trainer)["accelerator"] == "gpu"
    with pytest.raises(ConfigError, match=r"trainer\.accelerator=cuda"):
        trainer_kwargs(compose_cfg(["trainer=gpu", "trainer.accelerator=cuda"]).trainer)


@pytest.mark.parametrize(("devices", "needed"), [("4", 4), ("[0,2]", 3)])
def test_more_gpus_than_visible_is_a_config_error(fake_gpu, monkeypatch: pytest.MonkeyPatch, devices: str, needed: int):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=rf"trainer.devices=.* needs {needed} GPUs, but PyTorch sees 2.*Fix"):
        trainer_kwargs(compose_cfg(["trainer=ddp", f"trainer.devices={devices}"]).trainer)
    for fits in ("-1", "2", "[1]", "auto"):
        trainer_kwargs(compose_cfg(["trainer=ddp", f"trainer.devices={fits}"]).trainer)


def test_train_stops_before_writing_anything_when_the_gpu_is_absent(make_cfg, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    cfg = make_cfg("trainer=gpu")
    with pytest.raises(ConfigError, match=r"trainer\.accelerator=gpu"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()
