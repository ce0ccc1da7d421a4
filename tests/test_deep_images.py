"""16-bit and multi-band images end to end: read at full depth with their bands in file order,
normalised per band from the train split (cached), cached and batched at 16 bits, and evaluated,
predicted and exported from the checkpoint alone at that depth."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from omegaconf import open_dict

from semseg.data import band_stats
from semseg.data.band_stats import band_statistics
from semseg.data.batch import BatchPreparer, pad_collate
from semseg.data.mask_encoding import MaskEncoder
from semseg.data.reading import read_image
from semseg.data.samples import FileSamples, sample_source
from semseg.errors import ConfigError, DataError
from semseg.inference.checkpoint import load_module
from semseg.inference.evaluate import evaluate
from semseg.inference.export import export
from semseg.inference.predict import predict
from semseg.training.train import train
from tests.conftest import compose_named, folder_cfg, new_samples

# Background and square intensities that share their high byte (4): read as 8 bits, as OpenCV
# reads by default, every pixel of an image is the same; only the full 16 bits tell them apart.
BACKGROUND, SQUARE = (1024, 1130), (1160, 1270)
TWO_CLASSES = ["data.num_classes=2", "loss=ce_dice"]
BANDS = 5
SIGNAL_BAND = 3  # the multi-band set's squares show in this band only (a near-infrared, say)


def _square(rng: np.random.Generator, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    top, left = rng.integers(2, size // 2, 2)
    side = int(rng.integers(8, size // 2))
    mask[top : top + side, left : left + side] = 1
    return mask


def _write_pairs(root: Path, counts: dict[str, int], image_of, suffix: str, seed: int = 0, size: int = 32) -> Path:
    """Writes ``image_of(rng, mask) -> (path writer)`` images and their 0/1 index masks."""
    rng = np.random.default_rng(seed)
    for split, index in new_samples(root, counts):
        mask = _square(rng, size)
        image_of(rng, mask, root / "images" / split / f"{split}{index}{suffix}")
        cv2.imwrite(str(root / "masks" / split / f"{split}{index}.png"), mask)
    return root


def _gray16(rng: np.random.Generator, mask: np.ndarray, path: Path) -> None:
    image = np.where(mask == 1, rng.integers(*SQUARE, mask.shape), rng.integers(*BACKGROUND, mask.shape))
    cv2.imwrite(str(path), image.astype(np.uint16))


def _bands(rng: np.random.Generator, mask: np.ndarray, path: Path) -> None:
    """A planar 5-band uint16 TIFF: bands of noise at different levels, the square in one band."""
    image = np.stack([rng.integers(1000 * (b + 1), 1000 * (b + 1) + 3000, mask.shape) for b in range(BANDS)])
    image[SIGNAL_BAND][mask == 1] += 20000
    tifffile.imwrite(path, image.astype(np.uint16), photometric="minisblack", planarconfig="separate")


@pytest.fixture(scope="module")
def gray16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_pairs(tmp_path_factory.mktemp("gray16") / "set", {"train": 16, "val": 4, "test": 4}, _gray16, ".png")


@pytest.fixture(scope="module")
def multiband(tmp_path_factory: pytest.TempPathFactory) -> Path:
    counts = {"train": 8, "val": 4, "test": 4}
    return _write_pairs(tmp_path_factory.mktemp("bands") / "set", counts, _bands, ".tif")


@pytest.fixture(scope="module")
def gray16_run(gray16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gray16_run")
    overrides = ["data.in_channels=1", "trainer.max_epochs=15", "optimizer.lr=0.01", "data.batch_size=8"]
    metrics = train(folder_cfg(gray16, out, *TWO_CLASSES, *overrides))
    assert metrics["val/miou"] > 0.85, metrics  # a contrast only 16 bits hold is learned
    return out


def _train_images(root: Path) -> np.ndarray:
    """Every train image of ``root`` as (N, H, W, C) float64, read by the test's own means."""
    paths = sorted((root / "images" / "train").iterdir())
    if paths[0].suffix == ".tif":
        return np.stack([tifffile.imread(p).transpose(1, 2, 0) for p in paths]).astype(np.float64)
    return np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[..., None] for p in paths]).astype(np.float64)


def test_16_bit_detail_is_learned_and_normalised_with_the_train_split_statistics(gray16_run: Path, gray16: Path):
    module = load_module(gray16_run / "checkpoints" / "best.ckpt")
    pixels = _train_images(gray16) / 65535
    assert module.max_pixel_value == 65535
    mean, std = module.normalization
    assert mean == pytest.approx([pixels.mean()], rel=1e-6) and std == pytest.approx([pixels.std()], rel=1e-5)
    test_miou = json.loads((gray16_run / "metrics.json").read_text())["test/miou"]
    assert test_miou > 0.85


def test_eval_predict_and_export_take_16_bit_images_from_the_checkpoint_alone(
    gray16_run: Path, gray16: Path, tmp_path: Path
):
    ckpt = gray16_run / "checkpoints" / "best.ckpt"
    cfg = compose_named("eval", [f"ckpt_path={ckpt}", "trainer=cpu"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "eval")
    trained = json.loads((gray16_run / "metrics.json").read_text())
    assert evaluate(cfg)["test/miou"] == pytest.approx(trained["test/miou"], abs=1e-6)

    out = tmp_path / "pred"
    images = gray16 / "images" / "test"
    cfg = compose_named("predict", [f"ckpt_path={ckpt}", f"input={images}", f"output={out}"])
    assert predict(cfg)["predicted"] == 4
    mask = cv2.imread(str(out / "masks" / "test0.png"), cv2.IMREAD_UNCHANGED)
    truth = cv2.imread(str(gray16 / "masks" / "test" / "test0.png"), cv2.IMREAD_UNCHANGED)
    assert (mask == truth).mean() > 0.9
    overlay = cv2.imread(str(out / "overlay" / "test0.png"))
    assert overlay.dtype == np.uint8 and overlay.std() > 5  # the 16-bit image shown stretched, not black

    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime

    model = tmp_path / "m.onnx"
    result = export(compose_named("export", [f"ckpt_path={ckpt}", "format=onnx", f"output={model}"]))
    assert result["max_abs_diff"] < 1e-3
    info = json.loads({p.key: p.value for p in onnx.load(str(model)).metadata_props}["semseg"])
    assert info["max_pixel_value"] == 65535 and "0-65535" in info["input"]
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    pixels = read_image(images / "test0.png", 1).transpose(2, 0, 1)[None].astype(np.float32)  # raw 16-bit values
    exported = session.run(None, {"pixels": pixels})[0].argmax(1)[0]
    assert (exported == mask).mean() > 0.99


def test_a_16_bit_model_refuses_8_bit_images_and_names_them(gray16_run: Path, tmp_path: Path):
    folder = tmp_path / "eight"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((32, 32), 200, np.uint8))
    ckpt = gray16_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "pred"
    with pytest.raises(DataError, match=r"a\.png.*8-bit, but this model was trained on 16-bit images"):
        predict(compose_named("predict", [f"ckpt_path={ckpt}", f"input={folder}", f"output={out}"]))
    assert not (out / "masks" / "a.png").exists()


def test_multiband_tiffs_train_with_augmentations_evaluate_and_predict(multiband: Path, tmp_path: Path):
    out = tmp_path / "run"
    overrides = [f"data.in_channels={BANDS}", "augment=elastic", "trainer.max_epochs=2", "data.cache=disk"]
    metrics = train(folder_cfg(multiband, out, *TWO_CLASSES, *overrides))
    assert np.isfinite(metrics["val/loss"])
    module = load_module(out / "checkpoints" / "last.ckpt")
    pixels = _train_images(multiband).reshape(-1, BANDS) / 65535
    mean, std = module.normalization
    assert mean == pytest.approx(pixels.mean(axis=0).tolist(), rel=1e-6)
    assert std == pytest.approx(pixels.std(axis=0).tolist(), rel=1e-5)
    assert module.net(torch.zeros(1, BANDS, 32, 32)).shape == (1, 2, 32, 32)
    ckpt = out / "checkpoints" / "best.ckpt"
    cfg = compose_named("eval", [f"ckpt_path={ckpt}", "trainer=cpu"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "eval")
    assert evaluate(cfg)["test/miou"] == pytest.approx(metrics["test/miou"], abs=1e-6)
    pred = tmp_path / "pred"
    images = multiband / "images" / "test"
    cfg = compose_named("predict", [f"ckpt_path={ckpt}", f"input={images}", f"output={pred}"])
    assert predict(cfg)["predicted"] == 4
    assert set(np.unique(cv2.imread(str(pred / "masks" / "test0.png"), cv2.IMREAD_UNCHANGED))) <= {0, 1}


def test_augmentations_that_cannot_take_the_bands_stop_the_run_at_start_up(multiband: Path, tmp_path: Path):
    cfg = folder_cfg(multiband, tmp_path / "run", *TWO_CLASSES, f"data.in_channels={BANDS}", "augment=street")
    with pytest.raises(ConfigError, match=r"ColorJitter cannot augment uint16 images of 5 band\(s\)"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_16_bit_samples_are_cached_at_16_bits(gray16: Path):
    images, masks = (sorted((gray16 / kind / "val").iterdir()) for kind in ("images", "masks"))
    pairs = list(zip(images, masks, strict=True))
    files = FileSamples(pairs, MaskEncoder(2, None, None), 1, None)
    for mode in ("memory", "disk"):
        cached = sample_source(files, mode, 1.0, "val")
        image, mask = cached[0]
        assert image.dtype == np.uint16 and np.array_equal(image, files[0][0]) and np.array_equal(mask, files[0][1])


def test_band_statistics_are_the_pixels_and_a_second_pass_decodes_nothing(multiband: Path, monkeypatch):
    paths = sorted((multiband / "images" / "train").iterdir())
    mean, std = band_statistics(multiband, paths, BANDS)
    pixels = _train_images(multiband).reshape(-1, BANDS) / 65535
    assert mean == pytest.approx(pixels.mean(axis=0).tolist(), rel=1e-9)
    assert std == pytest.approx(pixels.std(axis=0).tolist(), rel=1e-6)

    def no_decoding(*args):
        raise AssertionError("decoded an image the cache holds")

    monkeypatch.setattr(band_stats, "read_image", no_decoding)
    assert band_statistics(multiband, paths, BANDS) == (mean, std)


def test_data_mean_and_std_of_another_length_than_the_bands_are_refused(multiband: Path, tmp_path: Path):
    one_value = ["data.mean=[0.5]", "data.std=[0.2]"]
    cfg = folder_cfg(multiband, tmp_path, *TWO_CLASSES, f"data.in_channels={BANDS}", *one_value)
    with pytest.raises(ConfigError, match=r"give one value per band \(data.in_channels=5\)"):
        train(cfg)


@pytest.mark.parametrize("layout", ["planar", "interleaved", "page_per_band", "lzw"])
def test_tiff_bands_are_read_in_file_order_in_every_layout(tmp_path: Path, layout: str):
    bands = np.random.default_rng(0).integers(0, 65535, (BANDS, 12, 10)).astype(np.uint16)
    path = tmp_path / "image.tif"
    if layout == "page_per_band":
        with tifffile.TiffWriter(path) as writer:
            for band in bands:
                writer.write(band, photometric="minisblack")
    else:
        contiguous = layout != "planar"
        stored = bands.transpose(1, 2, 0) if contiguous else bands
        compression = "lzw" if layout == "lzw" else None
        config = "contig" if contiguous else "separate"
        tifffile.imwrite(path, stored, photometric="minisblack", planarconfig=config, compression=compression)
    assert np.array_equal(read_image(path, BANDS), bands.transpose(1, 2, 0))
    with pytest.raises(DataError, match=r"image\.tif: image has 5 bands but data.in_channels=4"):
        read_image(path, 4)


def test_png_images_keep_16_bits_and_their_bands_come_in_file_order(tmp_path: Path):
    rgba = np.random.default_rng(1).integers(0, 65535, (6, 7, 4)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba[..., [2, 1, 0, 3]])  # OpenCV writes BGRA: the file holds RGBA
    assert np.array_equal(read_image(tmp_path / "rgba.png", 4), rgba)  # RGBA, not BGRA
    assert np.array_equal(read_image(tmp_path / "rgba.png", 3), rgba[..., :3])  # 16 bits kept
    stack = np.zeros((2, 3, 8, 8), np.uint16)  # two images of three bands: which axis holds the bands?
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    with pytest.raises(DataError, match=r"stack\.tif: a TIFF of axes .* more than one axis besides height and width"):
        read_image(tmp_path / "stack.tif", 3)
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((8, 8), np.float32))
    with pytest.raises(DataError, match=r"float\.tif: a float32 image; store 8- or 16-bit images"):
        read_image(tmp_path / "float.tif", 1)


def test_16_bit_batches_are_normalised_as_albumentations_does_and_never_mixed_with_8_bit():
    import albumentations as A

    image = np.random.default_rng(2).integers(0, 65536, (6, 5, 2)).astype(np.uint16)
    mean, std = [0.3, 0.6], [0.1, 0.2]
    preparer = BatchPreparer(mean, std, ignore_index=255, max_pixel_value=65535)
    batch = pad_collate([{"image": torch.from_numpy(image.transpose(2, 0, 1).copy()), "name": "a"}])
    expected = A.Normalize(mean=mean, std=std, max_pixel_value=65535)(image=image)["image"].transpose(2, 0, 1)
    np.testing.assert_allclose(preparer(batch)["image"][0].numpy(), expected, rtol=1e-5, atol=1e-4)
    eight = {"image": torch.zeros(2, 5, 6, dtype=torch.uint8), "name": "b"}
    with pytest.raises(DataError, match=r"images \(b\) are 8-bit, but this model was trained on 16-bit images"):
        preparer(pad_collate([eight]))
    with pytest.raises(DataError, match=r"more than one depth: a \(uint16\), b \(uint8\)"):
        pad_collate([batch | {"image": batch["image"][0], "name": "a"}, eight])
