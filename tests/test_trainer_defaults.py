"""The Trainer defaults a GPU user gets unasked, and what the CPU keeps."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from semseg.errors import ConfigError
from semseg.trainer_defaults import refuse_spawned_ranks, trainer_kwargs
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
    # trainer=gpu's precision; accelerator auto, as the fake GPU is found by torch.cuda.is_available only.
    cfg = compose_cfg(["trainer=gpu", "trainer.accelerator=auto", "data.crop_size=[32,32]"])
    kwargs = trainer_kwargs(cfg.trainer, cfg.data)
    assert kwargs["precision"] == "bf16-mixed" and kwargs["benchmark"] is True
    # The precision is the config's, as written: trainer=default keeps Lightning's fp32 on a GPU too.
    assert trainer_kwargs(compose_cfg([]).trainer)["precision"] == "32-true"
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


@pytest.mark.parametrize("preset", ["ddp", "ddp_cpu"])
def test_ddp_presets_give_their_ranks_the_timeout_the_docs_say(preset: str):
    cfg = compose_cfg([f"trainer={preset}", "trainer.accelerator=cpu"])  # trainer=ddp's GPUs need not be here
    minutes = cfg.trainer.strategy.timeout.minutes
    strategy = trainer_kwargs(cfg.trainer)["strategy"]
    assert type(strategy) is DDPStrategy and strategy._timeout == timedelta(minutes=minutes)  # not Lightning's 30
    robustness = (Path(__file__).parents[1] / "docs" / "robustness.md").read_text()
    assert f"{minutes} minutes (`trainer.strategy.timeout`" in " ".join(robustness.split())
    refuse_spawned_ranks(cfg.trainer)  # its ranks are started once
    spawned = compose_cfg([f"trainer={preset}", "+trainer.strategy.start_method=spawn"])
    with pytest.raises(ConfigError, match=r"^trainer\.strategy\.start_method=spawn restarts the ranks"):
        refuse_spawned_ranks(spawned.trainer)


def test_train_stops_before_writing_anything_when_the_gpu_is_absent(make_cfg, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    cfg = make_cfg("trainer=gpu")
    with pytest.raises(ConfigError, match=r"trainer\.accelerator=gpu"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()


def test_every_trainer_argument_is_a_key_and_null_ones_take_lightnings_defaults():
    import inspect

    import lightning as L

    from_run = {"self", "logger", "callbacks", "plugins", "default_root_dir"}  # semseg passes these
    arguments = set(inspect.signature(L.Trainer.__init__).parameters) - from_run
    cfg = compose_cfg(["trainer.fast_dev_run=true", "trainer.val_check_interval=0.5"])  # no + needed
    assert set(cfg.trainer) == arguments
    kwargs = trainer_kwargs(cfg.trainer, cfg.data)
    assert kwargs["fast_dev_run"] is True and kwargs["val_check_interval"] == 0.5
    assert "overfit_batches" not in kwargs and "detect_anomaly" not in kwargs  # null: not passed
    with pytest.raises(ConfigError, match=r"trainer\.fast_dev_rn is not a lightning\.Trainer argument; did you mean "):
        trainer_kwargs({**cfg.trainer, "fast_dev_rn": True})


@pytest.mark.parametrize("preset", ["default", "fdr", "limit", "overfit", "profiler"])
def test_debug_presets_train_on_the_cpu_without_a_logger(make_cfg, preset: str):
    composed = compose_cfg([f"debug={preset}"])
    assert composed.trainer.accelerator == "cpu" and not composed.logger and composed.trainer.detect_anomaly
    # The tests' cheap settings (logger=csv among them) are given on the command line, which wins.
    cfg = make_cfg(f"debug={preset}", "trainer.max_epochs=1" if preset in ("overfit", "limit") else "seed=0")
    metrics = train(cfg)
    assert "test/miou" in metrics
    run = Path(cfg.output_dir)
    if preset == "profiler":
        assert "Profiler Report" in (run / "fit-profiler.txt").read_text()
