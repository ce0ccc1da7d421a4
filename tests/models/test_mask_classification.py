"""Mask classification (model=mask2former, model=eomt on transformers): the network's log-probabilities
and own loss, then one tiny training per model, evaluated, predicted (tiled, TTA), exported (EoMT, marked
slow) or refused (Mask2Former)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import open_dict

import semseg.models.weights as weights
from semseg import extras
from semseg.builders import build_module
from semseg.errors import ConfigError
from semseg.inference.checkpoint import load_module
from semseg.inference.evaluate import evaluate
from semseg.inference.export import PixelsToLogits, export
from semseg.inference.predict import predict
from semseg.models import build_model
from semseg.models.mask_classification import MASK_ARCHITECTURES, MaskClassifier, mask_targets
from semseg.training.train import train
from tests.conftest import CHEAP, TINY_DECODER, TINY_ENCODER, compose_cfg, compose_named, tiny_data

pytest.importorskip("transformers")

# Smaller still than the models' tiny defaults: a test's training is a few seconds.
TEST_HF_CONFIG = {
    "mask2former": {
        "backbone_config": {
            "model_type": "swin",
            "embed_dim": 16,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 2, 2],
            "window_size": 4,
            "drop_path_rate": 0.0,
            "out_features": ["stage1", "stage2", "stage3", "stage4"],
        },
        # 64: the pixel decoder's GroupNorm(32) needs 2 channels a group on a 32x32 image's 1x1 stage.
        "feature_size": 64,
        "mask_feature_size": 64,
        "hidden_dim": 32,
        "num_attention_heads": 2,
        "encoder_layers": 1,
        "decoder_layers": 4,  # 3 layers, one per feature level: fewer leave input projections untrained
        "num_queries": 8,
        "train_num_points": 512,
    },
    "eomt": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_blocks": 1,
        "num_queries": 8,
        "train_num_points": 512,
    },
}
NUM_CLASSES = 5


def model_cfg(arch: str, **overrides) -> dict:
    return {"arch": arch, "encoder_name": None, "hf_config": TEST_HF_CONFIG[arch], "pretrained": None} | overrides


@pytest.mark.parametrize("arch", MASK_ARCHITECTURES)
def test_forward_gives_class_log_probabilities_at_any_size(arch):
    net = build_model(model_cfg(arch), 3, NUM_CLASSES).eval()
    with torch.no_grad():
        log_probabilities = net(torch.randn(2, 3, 37, 45))  # no stride divides either side
    assert log_probabilities.shape == (2, NUM_CLASSES, 37, 45)
    torch.testing.assert_close(log_probabilities.exp().sum(1), torch.ones(2, 37, 45), atol=1e-5, rtol=0)


def test_eomt_at_its_image_size_gives_transformers_own_outputs():
    """semseg's EoMT (any grid, exportable) changes nothing where transformers' works."""
    from transformers import EomtForUniversalSegmentation

    net = MaskClassifier(model_cfg("eomt", hf_config={**TEST_HF_CONFIG["eomt"], "image_size": 64}), 3, NUM_CLASSES)
    original = EomtForUniversalSegmentation(net.model.config)
    original.load_state_dict(net.model.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = net.model.eval()(images), original.eval()(images)
    torch.testing.assert_close(ours.masks_queries_logits, theirs.masks_queries_logits)
    torch.testing.assert_close(ours.class_queries_logits, theirs.class_queries_logits)


def test_under_bfloat16_autocast_the_probabilities_are_float32():
    net = build_model(model_cfg("eomt"), 3, NUM_CLASSES).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # trainer=gpu's bf16-mixed, on the CPU
        log_probabilities = net(torch.randn(1, 3, 32, 32))
    assert log_probabilities.dtype == torch.float32
    torch.testing.assert_close(log_probabilities.exp().sum(1), torch.ones(1, 32, 32), atol=1e-5, rtol=0)


def test_targets_are_a_mask_per_present_class_without_the_ignored_pixels():
    target = torch.tensor([[[0, 0, 3], [255, 3, 3]], [[255, 255, 255], [255, 255, 255]]])
    masks, classes = mask_targets(target, ignore_index=255)
    assert classes[0].tolist() == [0, 3]
    assert masks[0].tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 1, 1]]]  # 255 in neither
    assert masks[1].shape == (0, 2, 3) and classes[1].numel() == 0


@pytest.mark.parametrize("arch", MASK_ARCHITECTURES)
def test_the_loss_is_the_models_own_and_an_unlabelled_batch_costs_no_object_only(arch):
    torch.manual_seed(0)
    net = build_model(model_cfg(arch), 3, NUM_CLASSES).train()
    images = torch.randn(2, 3, 40, 45)  # padded to the stride, the padding ignored
    total, terms = net.training_loss(images, torch.randint(0, NUM_CLASSES, (2, 40, 45)), 255)
    assert set(terms) == {"cross_entropy", "mask", "dice"}
    torch.testing.assert_close(total, sum(terms.values()))
    total.backward()
    assert not [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]  # DDP needs it
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    # Every pixel ignored: no mask to match, so only the queries' "no object" classification costs.
    total, terms = net.training_loss(images, torch.full((2, 40, 45), 255), 255)
    assert torch.isfinite(total) and terms["cross_entropy"] > 0
    assert terms["mask"] == 0 and terms["dice"] == 0


def test_a_missing_mask_extra_names_its_install_command(monkeypatch):
    monkeypatch.setattr(extras, "_installed", lambda module: module != "transformers")
    with pytest.raises(ConfigError, match=r'model.arch=eomt needs transformers.*pip install "semseg\[mask\]"'):
        build_model(model_cfg("eomt"), 3, NUM_CLASSES)
    with pytest.raises(ConfigError, match=r"model=mask2former needs transformers"):
        extras.check_command_line(["model=mask2former"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"encoder_weights": "imagenet"}, r"model.encoder_weights=imagenet: .*model.pretrained"),
        ({"encoder_name": "resnet18"}, r"model.encoder_name=resnet18: model.arch=eomt takes no encoder_name"),
        ({"from_pretrained": "a/b"}, r"model.from_pretrained=a/b: .*model.pretrained"),
        ({"kwargs": {"x": 1}}, r"model.kwargs=.*model.hf_config"),
        ({"hf_config": {"hidden_sise": 64}}, r"model.hf_config: hidden_sise not in transformers' EomtConfig"),
        ({"hf_config": {"num_labels": 3}}, r"model.hf_config.num_labels: semseg sets it"),
        ({"pretrained": "/no/such/folder"}, r"model.pretrained=/no/such/folder: no such folder.*model.pretrained=null"),
    ],
)
def test_settings_that_do_not_apply_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        build_model(model_cfg("eomt", **overrides), 3, NUM_CLASSES)
    assert "\n" not in str(error.value)


def test_a_hub_model_offline_and_uncached_says_how_to_go_on(monkeypatch):
    monkeypatch.setattr(weights, "can_reach", lambda host: False)
    monkeypatch.setattr(weights, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(ConfigError, match=r"model.pretrained=owner/eomt: not in the local .*model.pretrained=null"):
        build_model(model_cfg("eomt", pretrained="owner/eomt"), 3, NUM_CLASSES)


def test_sigmoid_tasks_are_refused(make_cfg):
    cfg = make_cfg("model=eomt", "data.mode=binary", "data.num_classes=1", "data.class_names=[disk]")
    with pytest.raises(ConfigError, match=r"data.mode=binary: model.arch=eomt gives each pixel one class"):
        build_module(cfg)


def test_a_pretrained_folder_gives_its_weights_and_a_new_class_head(tmp_path: Path):
    torch.manual_seed(0)
    source = MaskClassifier(model_cfg("eomt"), 3, 3)
    source.model.save_pretrained(tmp_path / "eomt")
    loaded = MaskClassifier(model_cfg("eomt", hf_config={}, pretrained=str(tmp_path / "eomt")), 3, NUM_CLASSES)
    before, after = source.state_dict(), loaded.state_dict()
    differ = sorted(name for name in before if before[name].shape != after[name].shape)
    # 3 classes + "no object" -> 5 + 1: the class head and the loss's class weights.
    assert differ == ["model.class_predictor.bias", "model.class_predictor.weight", "model.criterion.empty_weight"]
    assert all(torch.equal(before[name], after[name]) for name in before if name not in differ)


@pytest.mark.parametrize("arch", MASK_ARCHITECTURES)
def test_the_backbone_is_the_encoder_of_the_fine_tuning_controls(make_cfg, arch):
    """param_groups.encoder_lr_mult and model.freeze_encoder act on the backbone (Swin; EoMT's ViT
    layers before the queries join)."""
    module = build_module(make_cfg(f"model={arch}", "param_groups.encoder_lr_mult=0.1", "optimizer.lr=1e-3"))
    optimizer, _ = module.build_optimization(total_steps=10)
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates["encoder"] == pytest.approx(1e-4) and rates["decoder"] == pytest.approx(1e-3)
    encoder_groups = [group for group in optimizer.param_groups if group["name"].startswith("encoder")]
    encoder_ids = {id(p) for group in encoder_groups for p in group["params"]}
    assert encoder_ids == {id(p) for p in module.net.architecture.encoder.parameters()}
    frozen = build_module(make_cfg(f"model={arch}", "model.freeze_encoder=true"))
    frozen.setup("fit")
    assert not any(p.requires_grad for p in frozen.net.architecture.encoder.parameters())


@pytest.fixture(scope="module", params=MASK_ARCHITECTURES)
def run(request, tiny_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tiny training per model (1 epoch on the 32x32 set): its config, metrics and run folder."""
    arch = request.param
    cheap = [o for o in CHEAP if o not in (TINY_ENCODER, TINY_DECODER)]
    cfg = compose_cfg([*cheap, "resume=false", *tiny_data(tiny_root), f"model={arch}", "loss=ce"])
    with open_dict(cfg):
        cfg.model.hf_config = TEST_HF_CONFIG[arch]
        cfg.output_dir = str(tmp_path_factory.mktemp(arch) / "run")
    return arch, cfg, train(cfg), Path(cfg.output_dir)


def test_trains_validates_tests_and_logs_the_loss_terms(run):
    _, cfg, metrics, folder = run
    for stage in ("val", "test"):
        assert 0.0 <= metrics[f"{stage}/miou"] <= 1.0 and np.isfinite(metrics[f"{stage}/loss"])
    with open(folder / "csv" / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    assert {"train/loss", "train/loss_cross_entropy", "train/loss_mask", "train/loss_dice"} <= columns
    info = json.loads((folder / "run_info.json").read_text())
    assert info["params"] > 0 and info["gflops"] > 0
    # The checkpoint holds the whole architecture: it rebuilds without the defaults in code.
    saved = torch.load(folder / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["model"]["hf_config"]["num_queries"] == 8
    assert build_module(cfg).hparams.model["hf_config"] == saved["hyper_parameters"]["model"]["hf_config"]


def test_eval_from_the_checkpoint_reproduces_the_test_metrics(run, tmp_path: Path):
    _, _, metrics, folder = run
    cfg = compose_named("eval", [f"ckpt_path={folder / 'checkpoints' / 'best.ckpt'}", "trainer=cpu"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
    evaluated = evaluate(cfg)
    for key in ("test/miou", "test/pixel_acc", "test/loss"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-5)


def test_predicts_tiled_and_with_test_time_augmentation(run, tiny_root: Path, tmp_path: Path):
    _, _, _, folder = run
    images = tiny_root / "images" / "test"
    settings = {"tiled": ["inference=tiled", "inference.tile_size=[16,16]"], "tta": ["inference=tta"]}
    for name, options in settings.items():
        checkpoint = folder / "checkpoints" / "best.ckpt"
        overrides = [f"ckpt_path={checkpoint}", f"input={images}", f"output={tmp_path / name}", "device=cpu"]
        assert predict(compose_named("predict", [*overrides, "outputs=[masks]", *options]))["predicted"] == 4
        for path in (tmp_path / name).rglob("*.png"):
            mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (32, 32) and mask.max() < NUM_CLASSES


def export_as(checkpoint: Path, fmt: str, output: Path) -> dict:
    return export(compose_named("export", [f"ckpt_path={checkpoint}", f"format={fmt}", f"output={output}"]))


def test_formats_that_cannot_take_the_model_are_refused_with_the_reason(run, tmp_path: Path):
    arch, _, _, folder = run
    checkpoint = folder / "checkpoints" / "best.ckpt"
    with pytest.raises(ConfigError, match=r"format=smp: .*smp cannot load"):
        export_as(checkpoint, "smp", tmp_path / "smp")
    if arch == "mask2former":
        for fmt in ("onnx", "torch_export"):
            with pytest.raises(ConfigError, match=f"format={fmt}: Mask2Former's Swin backbone does not export"):
                export_as(checkpoint, fmt, tmp_path / fmt)


# Slow: 15-20 s (ONNX) and 9 s (torch.export) on 2 idle CPU cores, most of it the exporters' tracing.
@pytest.mark.slow
@pytest.mark.parametrize("run", ["eomt"], indirect=True)
def test_eomt_exports_as_onnx_and_torch_export_matching_pytorch(run, tmp_path: Path):
    checkpoint = run[3] / "checkpoints" / "best.ckpt"
    assert export_as(checkpoint, "onnx", tmp_path / "model.onnx")["max_abs_diff"] < 1e-4  # export() checks 3 sizes
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(1).integers(0, 256, (1, 3, 41, 77)).astype(np.float32)  # an unseen size
    with torch.no_grad():
        reference = PixelsToLogits(load_module(checkpoint))(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(session.run(None, {"pixels": pixels})[0], reference, atol=1e-4)
    assert export_as(checkpoint, "torch_export", tmp_path / "model.pt2")["max_abs_diff"] < 1e-4


def test_init_from_a_mask_classification_checkpoint_loads_every_tensor(run, make_cfg):
    arch, _, _, folder = run
    checkpoint = folder / "checkpoints" / "best.ckpt"
    cfg = make_cfg(f"model={arch}", f"model.init_from={checkpoint}")
    with open_dict(cfg):
        cfg.model.hf_config = TEST_HF_CONFIG[arch]
    module = build_module(cfg)
    trained = load_module(checkpoint)
    for name, tensor in trained.net.state_dict().items():
        assert torch.equal(module.net.state_dict()[name], tensor), name
