"""Fine-tuning controls: model.freeze_encoder, param_groups.encoder_lr_mult, param_groups.no_decay_norm_bias."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.model_summary import summarize
from torch import nn

from semseg.builders import build_module
from semseg.errors import ConfigError
from semseg.run_folder import RunFolder
from semseg.task.param_groups import NORM_LAYERS, FineTuning
from semseg.task.schedulers import build_scheduler
from semseg.training.train import train

PROBE = "+callbacks.probe._target_=tests.test_finetuning_controls.EncoderProbe"
NO_TEST = "run_test=false"  # these tests look at the training only
# Today's optimizer and model configs as runs saved before these keys had them.
WITHOUT_FINE_TUNING_KEYS = (
    "~param_groups.no_decay_norm_bias",
    "~param_groups.encoder_lr_mult",
    "~model.freeze_encoder",
)


def _encoder(module: L.LightningModule) -> nn.Module:
    return module.net.architecture.encoder


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm running statistics included), copied."""
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


class EncoderProbe(L.Callback):
    """Snapshots of the network when fitting starts and after each training epoch, and what the
    optimizer holds of the encoder then; the instances of a test are kept in ``runs``."""

    runs: ClassVar[list[EncoderProbe]] = []

    def __init__(self) -> None:
        self.trainable: int | None = None  # what the model summary counts, when fitting starts
        self.encoder: dict[object, dict[str, torch.Tensor]] = {}
        self.decoder: dict[object, dict[str, torch.Tensor]] = {}
        self.encoder_groups: dict[int, set[str | None]] = {}  # the groups holding encoder parameters
        self.encoder_state: dict[int, bool] = {}  # whether any encoder parameter has optimizer state
        EncoderProbe.runs.append(self)

    def _snapshot(self, key: object, module: L.LightningModule) -> None:
        self.encoder[key] = _tensors(_encoder(module))
        self.decoder[key] = _tensors(module.net.architecture.decoder)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trainable = summarize(pl_module).trainable_parameters
        self._snapshot("start", pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        self._snapshot(epoch, pl_module)
        optimizer = trainer.optimizers[0]
        encoder = {id(p) for p in _encoder(pl_module).parameters()}
        self.encoder_groups[epoch] = {
            g.get("name") for g in optimizer.param_groups for p in g["params"] if id(p) in encoder
        }
        self.encoder_state[epoch] = any(id(p) in encoder for p in optimizer.state)


@pytest.fixture(autouse=True)
def probes():
    EncoderProbe.runs.clear()
    yield EncoderProbe.runs
    EncoderProbe.runs.clear()


def _last_checkpoint(cfg) -> Path:
    return RunFolder(cfg.output_dir).last_checkpoint


def _csv_rows(cfg) -> list[dict[str, str]]:
    with (Path(cfg.output_dir) / "csv" / "metrics.csv").open() as table:
        return list(csv.DictReader(table))


def test_a_frozen_encoder_is_bit_identical_after_training_and_out_of_the_optimizer(make_cfg, probes):
    cfg = make_cfg("model.freeze_encoder=true", PROBE, NO_TEST)
    train(cfg)
    (probe,) = probes
    assert _identical(probe.encoder["start"], probe.encoder[0])  # weights and BatchNorm statistics
    assert not _identical(probe.decoder["start"], probe.decoder[0])
    assert probe.encoder_groups[0] == set() and not probe.encoder_state[0]
    module = build_module(cfg)
    total, encoder = (sum(p.numel() for p in part.parameters()) for part in (module, _encoder(module)))
    assert probe.trainable == total - encoder  # the model summary's count


def test_freezing_for_n_epochs_trains_the_encoder_from_epoch_n_also_when_resumed(make_cfg, probes):
    cfg = make_cfg("model.freeze_encoder=1", "trainer.max_epochs=2", PROBE, NO_TEST)
    train(cfg)
    first = probes[-1]
    assert _identical(first.encoder["start"], first.encoder[0])  # frozen in epoch 0
    assert first.encoder_groups[0] == {"encoder", "encoder_no_decay"} and not first.encoder_state[0]
    assert not _identical(first.encoder[0], first.encoder[1])  # trained in epoch 1
    assert first.encoder_state[1]
    # Resumed past epoch N (the rule reads the epoch: a resumed run has no state of its own to keep).
    last = _last_checkpoint(cfg)
    resumed = make_cfg("model.freeze_encoder=1", "trainer.max_epochs=3", f"ckpt_path={last}", PROBE, NO_TEST)
    train(resumed)
    second = probes[-1]
    assert _identical(second.encoder["start"], first.encoder[1])  # the checkpoint's weights
    assert not _identical(second.encoder["start"], second.encoder[2])


@pytest.mark.parametrize(("schedule", "settings"), [("poly", []), ("cosine", ["scheduler.min_lr_ratio=0.1"])])
def test_the_encoder_group_follows_the_schedule_at_its_share_of_the_rate(make_cfg, schedule: str, settings: list[str]):
    cfg = make_cfg("param_groups.encoder_lr_mult=0.1", f"scheduler={schedule}", "scheduler.warmup_ratio=0.2", *settings)
    optimizer, scheduler = build_module(cfg).build_optimization(total_steps=20)
    # The schedule's factor at each step: the same schedule over one group at rate 1.
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference_schedule = build_scheduler(reference, cfg.scheduler, total_steps=20)
    assert [g["name"] for g in optimizer.param_groups] == ["decoder", "decoder_no_decay", "encoder", "encoder_no_decay"]
    for _ in range(20):
        factor = reference.param_groups[0]["lr"]
        for group in optimizer.param_groups:
            share = 0.1 if group["name"].startswith("encoder") else 1.0
            assert group["lr"] == pytest.approx(cfg.optimizer.lr * share * factor, rel=1e-9), group["name"]
        for each in (optimizer, reference):
            each.step()
        for each in (scheduler, reference_schedule):
            each.step()
    floor = 0.1 if schedule == "cosine" else 0.0
    assert reference.param_groups[0]["lr"] == pytest.approx(floor, abs=1e-9)  # the end of the schedule
    assert optimizer.param_groups[-1]["lr"] == pytest.approx(cfg.optimizer.lr * 0.1 * floor, abs=1e-12)


def test_both_rates_are_logged_every_step(make_cfg):
    cfg = make_cfg("param_groups.encoder_lr_mult=0.1", NO_TEST)
    train(cfg)
    rows = [row for row in _csv_rows(cfg) if row.get("train/lr")]
    assert len(rows) >= 2  # every step (log_every_n_steps=1)
    for row in rows:
        assert float(row["train/lr_encoder"]) == pytest.approx(0.1 * float(row["train/lr"]), rel=1e-6)


def test_norm_layers_and_biases_get_no_weight_decay(make_cfg):
    cfg = make_cfg()  # conf/train.yaml: param_groups.no_decay_norm_bias: true
    module = build_module(cfg)
    optimizer, _ = module.build_optimization(total_steps=10)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert set(decay) == {id(p) for p in module.parameters()}
    for layer in module.modules():
        for name, parameter in layer.named_parameters(recurse=False):
            exempt = isinstance(layer, NORM_LAYERS) or name == "bias"
            assert decay[id(parameter)] == (0.0 if exempt else cfg.optimizer.weight_decay), (layer, name)
    assert any(isinstance(layer, nn.Conv2d) for layer in module.modules())


def test_without_the_keys_the_optimizer_has_one_group_as_before(make_cfg):
    module = build_module(make_cfg(*WITHOUT_FINE_TUNING_KEYS))
    optimizer, _ = module.build_optimization(total_steps=10)
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["params"] == list(module.parameters())


def test_a_run_saved_with_one_group_resumes_with_its_optimizer_state_under_todays_defaults(make_cfg):
    """Saved before the keys (so with one group), resumed by today's config (no_decay_norm_bias: true):
    the run keeps the one group its optimizer state has. (Resumed with the keys still absent, it has
    that group anyway: test_without_the_keys_the_optimizer_has_one_group_as_before.)"""
    cfg = make_cfg(*WITHOUT_FINE_TUNING_KEYS, NO_TEST)
    train(cfg)
    saved = torch.load(_last_checkpoint(cfg), map_location="cpu", weights_only=True)
    assert len(saved["optimizer_states"][0]["param_groups"]) == 1
    train(make_cfg("trainer.max_epochs=2", f"ckpt_path={_last_checkpoint(cfg)}", NO_TEST))
    resumed = torch.load(_last_checkpoint(cfg), map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 1
    assert len(resumed["optimizer_states"][0]["param_groups"]) == 1
    assert resumed["hyper_parameters"]["param_groups"]["no_decay_norm_bias"] is False  # and its next resume too
    # The optimizer state went on from the saved one: AdamW's step counts kept rising.
    steps = {int(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()}
    assert steps == {2 * int(next(iter(saved["optimizer_states"][0]["state"].values()))["step"])}


def test_a_frozen_encoder_stays_in_eval_mode_whoever_calls_train(make_cfg):
    module = build_module(make_cfg("model.freeze_encoder=true"))
    _encoder(module).requires_grad_(False)  # as fitting does (setup)
    module.train()
    norms = [layer for layer in _encoder(module).modules() if isinstance(layer, nn.BatchNorm2d)]
    assert norms and not any(layer.training for layer in norms)
    assert module.net.architecture.decoder.training


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.freeze_encoder=-1", r"model.freeze_encoder=-1: use false, true, or a number of epochs"),
        ("model.freeze_encoder=1.5", r"model.freeze_encoder=1.5: use false, true"),
        ("param_groups.encoder_lr_mult=0", r"param_groups.encoder_lr_mult=0: give a positive factor"),
        ("param_groups.no_decay_norm_bias=sometimes", r"param_groups.no_decay_norm_bias=sometimes: use true or false"),
    ],
)
def test_bad_settings_are_refused_with_the_key_and_the_fix(make_cfg, override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        build_module(make_cfg(override))


def test_an_architecture_without_an_encoder_refuses_the_encoder_settings():
    with pytest.raises(ConfigError, match=r"model.freeze_encoder=true: model.arch=mine has no encoder"):
        FineTuning.from_config({"arch": "mine", "freeze_encoder": True}, {}, has_encoder=False)
    assert FineTuning.from_config({"freeze_encoder": 0}, {}).freeze_encoder is False  # frozen for 0 epochs: never


def test_the_fcn_encoder_freezes_too(make_cfg):
    module = build_module(make_cfg("model=fcn", "model.freeze_encoder=true"))
    optimizer, _ = module.build_optimization(total_steps=10)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in _encoder(module).parameters()}
    assert in_optimizer == {id(p) for p in module.net.architecture.decoder.parameters()}
