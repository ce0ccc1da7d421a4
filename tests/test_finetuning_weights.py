"""Starting from earlier weights (model.init_from, model.from_pretrained), vision-transformer
encoders under DPT at any input size, and the fine-tuning presets."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import semseg.models.weights as weights
from semseg.builders import build_module
from semseg.errors import ConfigError
from semseg.inference.checkpoint import load_module
from semseg.inference.export import export
from semseg.models import build_model
from semseg.task.module import SegmentationModule
from semseg.training.checkpoints import resume_checkpoint
from semseg.training.train import train
from tests.conftest import TINY_DPT_OVERRIDES, compose_cfg, compose_named

# timm's test ViT (0.37 M parameters, 16-pixel patches) under a narrow DPT decoder.
TINY_DECODER = {"decoder_intermediate_channels": [16, 32, 64, 64], "decoder_fusion_channels": 16}
TINY_DPT = {"arch": "dpt", "encoder_name": "tu-test_vit", "encoder_weights": None, "kwargs": TINY_DECODER}
FEWER_CLASSES = ["data.num_classes=3", "data.class_names=null"]  # trained_run has 5


@pytest.fixture(scope="module")
def earlier(trained_run: Path) -> Path:
    return trained_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def earlier_tensors(earlier: Path) -> dict[str, torch.Tensor]:
    return load_module(earlier).net.architecture.state_dict()


@pytest.fixture(scope="module")
def smp_folder(earlier: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The earlier run exported as an smp save_pretrained folder (export.py format=smp)."""
    folder = tmp_path_factory.mktemp("export") / "smp_model"
    export(compose_named("export", [f"ckpt_path={earlier}", "format=smp", f"output={folder}"]))
    return folder


def logged(caplog: pytest.LogCaptureFixture, key: str) -> str:
    return next(message for message in caplog.messages if message.startswith(key))


def head_names(tensors: dict) -> list[str]:
    return [name for name in tensors if name.startswith("segmentation_head.")]


# ---- model.init_from ----


def test_init_from_loads_what_fits_and_reinitialises_the_head_of_another_class_set(
    earlier, earlier_tensors, make_cfg, caplog
):
    with caplog.at_level(logging.INFO, logger="semseg"):
        now = build_module(make_cfg(f"model.init_from={earlier}", *FEWER_CLASSES)).net.architecture.state_dict()
    head = head_names(now)
    assert head and all(now[name].shape != earlier_tensors[name].shape for name in head)
    assert all(torch.equal(now[name], earlier_tensors[name]) for name in now if name not in head)
    line = logged(caplog, "model.init_from=")
    assert f"loaded {len(now) - len(head)} of the network's {len(now)} tensors" in line
    assert f"{len(head)} re-initialised" in line and "segmentation_head.0.weight" in line
    assert "semseg unet on tu-test_resnet, 5 classes, 3 input channels" in line


def test_init_from_adapts_the_first_convolution_to_other_input_channels(earlier, earlier_tensors, make_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="semseg"):
        now = build_module(make_cfg(f"model.init_from={earlier}", "data.in_channels=1")).net.architecture.state_dict()
    adapted = [name for name in now if now[name].shape != earlier_tensors[name].shape]
    assert len(adapted) == 1
    # smp's adaptation of RGB filters to one channel: summed
    torch.testing.assert_close(now[adapted[0]], earlier_tensors[adapted[0]].sum(1, keepdim=True))
    assert all(torch.equal(now[name], earlier_tensors[name]) for name in now if name not in adapted)
    assert f"{adapted[0]} adapted to the input channels" in logged(caplog, "model.init_from=")


def test_init_from_another_architecture_or_a_bad_file_is_refused_in_one_line(earlier, make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"model.init_from=.*none of its encoder's tensors fit model.arch=dpt.*unet"):
        build_module(make_cfg(f"model.init_from={earlier}", "model=dpt", *TINY_DPT_OVERRIDES))
    with pytest.raises(ConfigError, match=r"model.init_from=.*: no such file\. Give a checkpoint"):
        build_module(make_cfg(f"model.init_from={tmp_path / 'nope.ckpt'}"))
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(earlier.read_bytes()[:5000])
    with pytest.raises(ConfigError, match=r"model.init_from=.*damaged or truncated") as raised:
        build_module(make_cfg(f"model.init_from={damaged}"))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("resumed", ["ckpt_path", "last.ckpt in the run folder"])
def test_a_resumed_run_does_not_load_init_from(resumed, earlier, earlier_tensors, make_cfg, tmp_path, caplog):
    if resumed == "ckpt_path":
        cfg = make_cfg(f"model.init_from={earlier}", f"ckpt_path={earlier}")
    else:
        cfg = make_cfg(f"model.init_from={tmp_path / 'moved_since.ckpt'}", "resume=auto")
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        shutil.copy(earlier, tmp_path / "run" / "checkpoints" / "last.ckpt")
    with caplog.at_level(logging.INFO, logger="semseg"):
        now = build_module(cfg, resume_from=resume_checkpoint(cfg)).net.architecture.state_dict()
    # Lightning restores the checkpoint's weights after building: loading init_from is no use
    assert not all(torch.equal(now[name], earlier_tensors[name]) for name in now if now[name].is_floating_point())
    assert "training resumes from a checkpoint" in logged(caplog, "model.init_from is not loaded")


# ---- model.from_pretrained ----


def test_from_pretrained_takes_the_folders_architecture_and_weights(smp_folder, earlier_tensors, make_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="semseg"):
        module = build_module(make_cfg(f"model.from_pretrained={smp_folder}", "model=segformer", *FEWER_CLASSES))
    model = module.hparams.model
    assert (model["arch"], model["encoder_name"], model["encoder_weights"]) == ("unet", "tu-test_resnet", None)
    assert "; ignored: model.arch=segformer, model.encoder_name=mit_b0" in logged(caplog, "model.from_pretrained=")
    now = module.net.architecture.state_dict()
    head = head_names(now)
    assert all(torch.equal(now[name], earlier_tensors[name]) for name in now if name not in head)
    assert "2 re-initialised" in logged(caplog, f"model.from_pretrained={smp_folder} (smp Unet")
    # The hyper-parameters describe the network: its checkpoints load without the folder.
    rebuilt = SegmentationModule(**{**module.hparams, "model": {**model, "from_pretrained": "/gone"}})
    rebuilt.load_state_dict(module.state_dict())


def test_from_pretrained_offline_or_missing_is_one_line_with_the_fix(make_cfg, monkeypatch, tmp_path):
    monkeypatch.setattr(weights, "can_reach", lambda host: False)
    monkeypatch.setattr(weights, "try_to_load_from_cache", lambda *args, **kwargs: None)
    with pytest.raises(ConfigError, match=r"not in the local Hugging Face cache and huggingface.co cannot be reached"):
        build_module(make_cfg("model.from_pretrained=smp-hub/upernet-convnext-tiny"))
    with pytest.raises(ConfigError, match=r"model.from_pretrained=.*no such folder"):
        build_module(make_cfg(f"model.from_pretrained={tmp_path / 'not' / 'here'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no readable config.json"):
        build_module(make_cfg(f"model.from_pretrained={tmp_path / 'empty'}"))


# ---- vision transformers under DPT ----


@pytest.mark.parametrize("patch", [16, 14])  # 14: DINOv2's, not a power of two
def test_dpt_on_a_vit_trains_and_predicts_at_odd_sizes(patch):
    torch.manual_seed(0)
    net = build_model(TINY_DPT | {"kwargs": TINY_DECODER | {"patch_size": patch}}, in_channels=3, num_classes=4)
    assert net.stride == 2 * patch  # DPT halves the grid of patches once
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for height, width in [(70, 95), (123, 61)]:
        images, masks = torch.randn(2, 3, height, width), torch.randint(0, 4, (2, height, width))
        net.train()
        logits = net(images)
        assert logits.shape == (2, 4, height, width)
        F.cross_entropy(logits, masks).backward()
        optimizer.step()
        optimizer.zero_grad()
        net.eval()
        with torch.no_grad():
            assert net(images).shape == (2, 4, height, width)


def test_a_vit_weights_file_loads_through_timm_adapted_to_one_channel(tmp_path):
    source = timm.create_model("test_vit", pretrained=False).state_dict()
    save_file(source, tmp_path / "vit.safetensors")
    vit = build_model(TINY_DPT | {"encoder_weights": str(tmp_path / "vit.safetensors")}, 1, 2).architecture.encoder
    loaded = vit.model.state_dict()
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], source["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(
        loaded["patch_embed.proj.weight"], source["patch_embed.proj.weight"].sum(1, keepdim=True)
    )
    with pytest.raises(ConfigError, match=r"model.encoder_weights=.*no such file"):
        build_model(TINY_DPT | {"encoder_weights": str(tmp_path / "nope.pth")}, 3, 2)


def test_timm_hub_weights_offline_and_uncached_fail_fast(monkeypatch):
    monkeypatch.setattr(weights, "can_reach", lambda host: False)
    monkeypatch.setattr(weights, "try_to_load_from_cache", lambda *args, **kwargs: None)
    with pytest.raises(ConfigError, match=r"tu-test_vit weights are not in the local cache.*encoder_weights=null"):
        build_model(TINY_DPT | {"encoder_weights": "imagenet"}, 3, 2)


@pytest.mark.parametrize(
    ("arch", "encoder", "says"),
    [("unet", "tu-test_vit", "plain vision transformer .* use model=dpt"), ("dpt", "tu-test_resnet", "needs a plain")],
)
def test_vit_encoders_and_dpt_go_together_or_say_so(arch, encoder, says):
    with pytest.raises(ConfigError, match=says):
        build_model({"arch": arch, "encoder_name": encoder, "encoder_weights": None}, 3, 2)


# ---- presets ----


@pytest.mark.parametrize("preset", ["linear_probe", "finetune"])
def test_presets_compose_on_dinov2_and_train(preset, make_cfg):
    cfg = compose_cfg([f"experiment={preset}"])
    assert (cfg.model.arch, cfg.model.encoder_name) == ("dpt", "tu-vit_small_patch14_dinov2")
    assert cfg.model.encoder_weights is not None
    if preset == "linear_probe":
        assert cfg.model.freeze_encoder is True
    else:
        assert cfg.param_groups.encoder_lr_mult == 0.1 and cfg.optimizer.lr < compose_cfg([]).optimizer.lr
    metrics = train(make_cfg(f"experiment={preset}", *TINY_DPT_OVERRIDES, "run_test=false"))
    assert 0.0 <= metrics["val/miou"] <= 1.0


def test_smp_export_of_a_dpt_on_14_pixel_patches_is_refused_with_the_formats_that_work(
    earlier: Path, tmp_path: Path, monkeypatch
):
    # smp.from_pretrained would rebuild DPT for 16-pixel patches: the folder would not load as trained.
    import semseg.inference.export as export_module

    monkeypatch.setattr(export_module, "plain_vit_patch", lambda name: 14)
    with pytest.raises(ConfigError, match="format=smp: smp cannot load a DPT on 14-pixel patches"):
        export_module.export_smp(load_module(earlier), tmp_path / "smp", None)
