"""predict.py: masks at the input's size, colour masks and overlays; tiling; no overwriting."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semseg.errors import ConfigError, DataError
from semseg.inference.checkpoint import load_module
from semseg.inference.predict import predict, predict_mask
from semseg.inference.tiling import InferenceSettings
from tests.conftest import compose_named


def predict_cfg(trained_run: Path, input_path: Path, output: Path, *overrides: str):
    return compose_named(
        "predict",
        [
            f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}",
            f"input={input_path}",
            f"output={output}",
            "device=cpu",
            *overrides,
        ],
    )


@pytest.fixture
def odd_images(tmp_path: Path, tiny_root: Path) -> Path:
    """Two images of sizes no stride divides, one larger than a 32-pixel tile."""
    folder = tmp_path / "in"
    folder.mkdir()
    source = cv2.imread(str(next((tiny_root / "images" / "test").iterdir())))
    cv2.imwrite(str(folder / "wide.png"), cv2.resize(source, (90, 70)))
    cv2.imwrite(str(folder / "small.jpg"), source[:27, :31])
    return folder


def test_outputs_have_the_inputs_size_and_the_class_palette(trained_run, odd_images, tmp_path):
    out = tmp_path / "out"
    result = predict(predict_cfg(trained_run, odd_images, out, "inference.tile_size=[32,32]"))
    assert result == {"predicted": 2, "skipped": 0, "failed": 0}
    module = load_module(trained_run / "checkpoints" / "best.ckpt")
    for stem, (height, width) in {"wide": (70, 90), "small": (27, 31)}.items():
        mask = cv2.imread(str(out / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (height, width) and mask.dtype == np.uint8 and mask.max() < 5
        colour = cv2.cvtColor(cv2.imread(str(out / "colour" / f"{stem}.png")), cv2.COLOR_BGR2RGB)
        assert np.array_equal(colour, module.palette[mask])
        assert cv2.imread(str(out / "overlay" / f"{stem}.png")).shape == (height, width, 3)


def test_tiled_prediction_feeds_the_network_tiles_and_one_covering_tile_is_the_whole_image(trained_run, odd_images):
    module = load_module(trained_run / "checkpoints" / "best.ckpt")
    image = cv2.cvtColor(cv2.imread(str(odd_images / "wide.png")), cv2.COLOR_BGR2RGB)  # 90x70
    whole = predict_mask(module, image, InferenceSettings())
    calls = []
    module.net.register_forward_pre_hook(lambda _, args: calls.append(tuple(args[0].shape[-2:])))
    tiled = predict_mask(module, image, InferenceSettings.from_config({"tile_size": [32, 32], "tile_overlap": 0.5}))
    assert max(max(c) for c in calls) <= 32 and len(calls) > 1
    assert tiled.shape == whole.shape and tiled.max() < 5
    # How close small tiles come to the whole image depends on the network's context (99.87% of
    # pixels on the README's ISBI U-Net; a 2-epoch test model is far less stable): exactness is
    # tests/test_inference.py's, with a pointwise network. One tile covering the image is exact.
    covering = InferenceSettings.from_config({"tile_size": [96, 96], "tile_overlap": 0.25})
    assert np.array_equal(predict_mask(module, image, covering), whole)


def test_existing_outputs_are_never_overwritten_unless_asked(trained_run, odd_images, tmp_path):
    out = tmp_path / "out"
    predict(predict_cfg(trained_run, odd_images, out))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    with pytest.raises(ConfigError, match="overwrite=true"):
        predict(predict_cfg(trained_run, odd_images, out))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before

    (out / "overlay" / "wide.png").unlink()  # an interrupted run
    assert predict(predict_cfg(trained_run, odd_images, out, "skip_existing=true"))["predicted"] == 1
    assert predict(predict_cfg(trained_run, odd_images, out, "overwrite=true"))["predicted"] == 2


def test_an_unreadable_image_is_reported_and_the_others_predicted(trained_run, odd_images, tmp_path):
    (odd_images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"broken.png: cannot read this image"):
        predict(predict_cfg(trained_run, odd_images, out))
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["small.png", "wide.png"]
    assert json.loads((out / "failed_images.json").read_text())["failed"][0]["file"].endswith("broken.png")


def test_a_single_file_and_bad_inputs(trained_run, odd_images, tmp_path):
    out = tmp_path / "out"
    assert predict(predict_cfg(trained_run, odd_images / "small.jpg", out, "outputs=[masks]"))["predicted"] == 1
    assert [p.name for p in out.iterdir()] == ["masks"]
    with pytest.raises(ConfigError, match=r"input=.*nowhere: no such file or folder"):
        predict(predict_cfg(trained_run, tmp_path / "nowhere", out))
    (odd_images / "wide.jpg").write_bytes((odd_images / "small.jpg").read_bytes())
    with pytest.raises(DataError, match=r"wide\.png: shares its stem with wide\.jpg"):
        predict(predict_cfg(trained_run, odd_images, tmp_path / "other"))
    with pytest.raises(ConfigError, match="outputs="):
        predict(predict_cfg(trained_run, odd_images, out, "outputs=[probabilities]"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Payload()}, path)
    with pytest.raises(ConfigError, match="refused to load"):
        load_module(path)
    assert not marker.exists()
    with pytest.raises(ConfigError, match="no such file"):
        load_module(tmp_path / "missing.ckpt")
