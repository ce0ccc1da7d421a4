"""export.py: ONNX, torch.export and smp folders that agree with PyTorch and carry the classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from semseg.errors import ConfigError
from semseg.inference.checkpoint import load_module
from semseg.inference.export import PixelsToLogits, export
from tests.conftest import compose_named

CLASSES = ["background", "disk", "square", "triangle", "speck"]


def export_cfg(checkpoint: Path, *overrides: str):
    return compose_named("export", [f"ckpt_path={checkpoint}", *overrides])


@pytest.fixture(scope="module")
def checkpoint(trained_run: Path) -> Path:
    return trained_run / "checkpoints" / "best.ckpt"


def reference_logits(checkpoint: Path, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return PixelsToLogits(load_module(checkpoint))(torch.from_numpy(pixels)).numpy()


def test_onnx_has_dynamic_sizes_the_classes_and_matches_pytorch(checkpoint, tmp_path):
    import onnx
    import onnxruntime

    result = export(export_cfg(checkpoint, "format=onnx", f"output={tmp_path / 'model.onnx'}"))
    assert result["max_abs_diff"] < 1e-3
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(1).integers(0, 256, (3, 3, 41, 77)).astype(np.float32)  # unseen shape
    logits = session.run(None, {"pixels": pixels})[0]
    np.testing.assert_allclose(logits, reference_logits(checkpoint, pixels), atol=1e-3)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    info = json.loads(props["semseg"])
    assert info["class_names"] == CLASSES and len(info["palette"]) == 5 and info["in_channels"] == 3


def test_torch_export_program_matches_pytorch(checkpoint, tmp_path):
    path = tmp_path / "model.pt2"
    export(export_cfg(checkpoint, "format=torch_export", f"output={path}"))
    extra = {"semseg.json": ""}
    program = torch.export.load(str(path), extra_files=extra)
    assert json.loads(extra["semseg.json"])["class_names"] == CLASSES
    pixels = np.random.default_rng(2).integers(0, 256, (1, 3, 64, 64)).astype(np.float32)
    logits = program.module(check_guards=False)(torch.from_numpy(pixels)).detach().numpy()
    np.testing.assert_allclose(logits, reference_logits(checkpoint, pixels), atol=1e-4)


def test_smp_folder_loads_without_this_repository(checkpoint, tmp_path):
    import albumentations as A
    import segmentation_models_pytorch as smp

    folder = tmp_path / "smp_model"
    export(export_cfg(checkpoint, "format=smp", f"output={folder}"))
    model = smp.from_pretrained(str(folder)).eval()
    preprocess = A.load(str(folder / "preprocessing.json"))
    image = np.random.default_rng(3).integers(0, 256, (37, 45, 3)).astype(np.uint8)
    x = torch.from_numpy(preprocess(image=image)["image"].transpose(2, 0, 1))[None]
    assert x.shape[-2:] == (64, 64)  # padded to the encoder's stride
    with torch.no_grad():
        logits = model(x)[..., :37, :45].numpy()
    reference = reference_logits(checkpoint, image.transpose(2, 0, 1)[None].astype(np.float32))
    np.testing.assert_allclose(logits, reference, atol=1e-3)
    assert json.loads((folder / "semseg.json").read_text())["class_names"] == CLASSES


def test_exports_are_checked_before_they_are_put_in_place(checkpoint, tmp_path):
    folder = tmp_path / "smp_model"
    with pytest.raises(ConfigError, match="differ from PyTorch's by up to"):
        export(export_cfg(checkpoint, "format=smp", f"output={folder}", "tolerance=1e-12"))
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a half-written staging copy
    export(export_cfg(checkpoint, "format=smp", f"output={folder}"))
    with pytest.raises(ConfigError, match=r"exists already; use overwrite=true"):
        export(export_cfg(checkpoint, "format=smp", f"output={folder}"))


def test_formats_a_model_cannot_take_are_refused(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"format=torchscript.*use torch_export"):
        export(export_cfg(checkpoint, "format=torchscript"))
    module = load_module(checkpoint)
    fcn = type(module)(**{**module.hparams, "model": {**module.hparams.model, "arch": "fcn", "kwargs": {}}})
    path = tmp_path / "fcn.ckpt"
    torch.save({"state_dict": fcn.state_dict(), "hyper_parameters": dict(fcn.hparams)}, path)
    with pytest.raises(ConfigError, match="FCN is this repository's own architecture"):
        export(export_cfg(path, "format=smp", f"output={tmp_path / 'fcn_smp'}"))
