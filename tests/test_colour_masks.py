"""Colour-coded masks: data.label_map with RGB colour keys or a palette file (CSV, JSON), their
encoding, the data inspection's unmapped colours (from the cached histogram), and a run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import open_dict

from semseg.data import mask_stats
from semseg.data.inspection import inspect_data, inspect_folder
from semseg.data.mask_encoding import MaskEncoder, resolve_class_names
from semseg.data.samples import FileSamples
from semseg.errors import ConfigError, DataError
from semseg.inference.checkpoint import load_module
from semseg.inference.evaluate import evaluate
from semseg.inference.predict import predict
from semseg.training.train import train
from tests.conftest import compose_cfg, compose_named
from tests.test_inspection import run_inspect_data

# CamVid's own label colours (RGB) for four of its classes, and its void.
CLASSES = {"sky": (128, 128, 128), "building": (128, 0, 0), "road": (128, 64, 128), "car": (64, 0, 128)}
VOID = (0, 0, 0)
NAMES = list(CLASSES)
COLOUR_KEYS = {"[128,128,128]": "sky", "128,0,0": 1, "#804080": "road", "[64, 0, 128]": 3, "[0,0,0]": 255}


def colour_mask(seed: int, size: int = 32, extra: tuple[int, int, int] | None = None) -> np.ndarray:
    """(H, W, 3) RGB: sky above, a building, road below, a car on it, a few void pixels."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size, 3), np.uint8)
    horizon = int(rng.integers(10, 16))
    mask[:horizon] = CLASSES["sky"]
    left = int(rng.integers(0, size // 2))
    mask[4:horizon, left : left + 10] = CLASSES["building"]
    mask[horizon:] = CLASSES["road"]
    top, left = int(rng.integers(horizon, size - 8)), int(rng.integers(0, size - 10))
    mask[top : top + 6, left : left + 9] = CLASSES["car"]
    mask[-2:, :3] = VOID
    if extra is not None:
        mask[0, :5] = extra
    return mask


def write_colour_pair(root: Path, split: str, stem: str, rgb: np.ndarray) -> None:
    for folder in ("images", "masks"):
        (root / folder / split).mkdir(parents=True, exist_ok=True)
    # The image shows each class in its own shade (plus noise), so a tiny model can learn something.
    image = (rgb.astype(np.int16) // 2 + np.random.default_rng(len(stem)).integers(0, 20, rgb.shape)).astype(np.uint8)
    cv2.imwrite(str(root / "images" / split / f"{stem}.png"), image[..., ::-1])
    cv2.imwrite(str(root / "masks" / split / f"{stem}.png"), rgb[..., ::-1])  # OpenCV writes BGR


def colour_folder(root: Path, extra: dict[str, tuple[int, int, int]] | None = None) -> Path:
    """Train 4, val 2 colour masks; ``extra``: stem -> a colour no class has, drawn into that mask."""
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            stem = f"{split}{i}"
            write_colour_pair(root, split, stem, colour_mask(i + 10 * (split == "val"), extra=(extra or {}).get(stem)))
    return root


def palette_files(folder: Path) -> dict[str, Path]:
    """The same palette (four classes, then void) as CSV with and without a header, and both JSON forms."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [*CLASSES.items(), ("void", VOID)]
    files = {
        "header.csv": "name,r,g,b\n" + "".join(f"{n},{r},{g},{b}\n" for n, (r, g, b) in rows),
        "plain.csv": "".join(f"{n}, {r}, {g}, {b}\n" for n, (r, g, b) in rows),
        "list.json": json.dumps([{"name": n, "color": list(c)} for n, c in rows]),
        "object.json": json.dumps({n: list(c) for n, c in rows}),
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return {name: folder / name for name in files}


def expected_codes(rgb: np.ndarray) -> np.ndarray:
    codes = np.full(rgb.shape[:2], 255, np.uint8)  # MASK_PAD_CODE: void
    for index, colour in enumerate(CLASSES.values()):
        codes[(rgb == colour).all(axis=2)] = index
    return codes


def test_colour_keys_and_palette_files_give_the_same_encoding(tmp_path: Path):
    rgb = colour_mask(0)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    by_keys = MaskEncoder(4, 255, COLOUR_KEYS, NAMES)
    assert np.array_equal(by_keys.encode(bgr, "m.png"), expected_codes(rgb))
    for name, path in palette_files(tmp_path / "palettes").items():
        # A palette file's last row is void when data.ignore_index is its index.
        encoder = MaskEncoder(4, 4, str(path))
        assert np.array_equal(encoder.encode(bgr, "m.png"), expected_codes(rgb)), name
        assert resolve_class_names(4, None, str(path), 4) == NAMES, name
    # Relative to data.root; a 4-channel (BGRA) mask's alpha is left out.
    relative = MaskEncoder(4, 4, "palettes/header.csv", root=tmp_path)
    bgra = np.concatenate([bgr, np.full((32, 32, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(relative.encode(bgra, "m.png"), expected_codes(rgb))


def test_class_names_resolve_and_bad_maps_are_refused_in_one_line(tmp_path: Path):
    with pytest.raises(DataError, match=r"maps \[0,0,0\] to 'vehicle', which is no class: the class names are"):
        MaskEncoder(4, 255, {"[0,0,0]": "vehicle"}, NAMES)
    with pytest.raises(ConfigError, match=r"mixes stored values \[0\] with RGB colours"):
        MaskEncoder(4, 255, {0: 0, "[128,0,0]": 1})
    header = palette_files(tmp_path)["header.csv"]
    too_few = r"lists 5 classes \(sky, .*void\) but data.num_classes=4: set data.num_classes=5"
    with pytest.raises(ConfigError, match=too_few):
        resolve_class_names(4, None, str(header))
    with pytest.raises(ConfigError, match="no such palette file"):
        MaskEncoder(4, 255, "missing.csv", root=tmp_path)
    # Value maps take class names too.
    assert MaskEncoder(2, None, {0: "background", 255: "object"}, ["background", "object"]).lut[255] == 1


def test_unmapped_colours_and_single_channel_masks_raise_with_the_file_and_the_fix():
    encoder = MaskEncoder(4, 255, COLOUR_KEYS, NAMES)
    rgb = colour_mask(0, extra=(1, 2, 3))
    unmapped = r"x\.png: mask colours \[1, 2, 3\] \(5 px\) map to no class.*data.ignore_index"
    with pytest.raises(DataError, match=unmapped):
        encoder.encode(np.ascontiguousarray(rgb[..., ::-1]), "x.png")
    with pytest.raises(DataError, match=r"y\.png: mask has 1 channel\(s\), but data.label_map maps RGB colours"):
        encoder.encode(np.zeros((4, 4), np.uint8), "y.png")
    with pytest.raises(DataError, match=r"z\.png: mask has 3 channels.*\"\[128,64,128\]\""):
        MaskEncoder(4, 255, {0: 0}).encode(np.zeros((4, 4, 3), np.uint8), "z.png")


def test_the_inspection_counts_classes_and_lists_unmapped_colours_from_the_cache(tmp_path: Path, monkeypatch):
    root = colour_folder(tmp_path, extra={"train1": (1, 2, 3), "val0": (1, 2, 3), "train2": (9, 9, 9)})
    report = inspect_folder(root, 4, NAMES, 255, COLOUR_KEYS)
    assert [entry["colour"] for entry in report.unmapped_colours] == [[1, 2, 3], [9, 9, 9]]
    first = report.unmapped_colours[0]
    assert first["pixels"] == 10 and first["file_count"] == 2 and first["files"][0].endswith("train1.png")
    assert report.to_json()["unmapped_colours"] == report.unmapped_colours
    assert len(report.problems) == 2 and "holds the colour [1, 2, 3]" in report.problems[0].problem
    assert "colour [1, 2, 3] maps to no class: 10 pixels in 2 file(s)" in report.summary()

    # Mapping them now (one to a class, one to ignore): the counts come from the cache, no mask is read.
    reads: list[Path] = []
    original = mask_stats.summarize_mask
    monkeypatch.setattr(mask_stats, "summarize_mask", lambda path: reads.append(path) or original(path))
    fixed = inspect_folder(root, 4, NAMES, 255, COLOUR_KEYS | {"[1,2,3]": "car", "[9,9,9]": 255})
    assert fixed.ok and not fixed.unmapped_colours and reads == []
    expected = np.zeros(4, np.int64)
    for i in range(4):
        rgb = colour_mask(i, extra={1: (1, 2, 3), 2: (9, 9, 9)}.get(i))
        codes = expected_codes(rgb)
        codes[(rgb == (1, 2, 3)).all(axis=2)] = 3  # now car; [9, 9, 9] stays ignored
        expected += np.bincount(codes[codes < 4], minlength=4)
    assert fixed.splits["train"].counts.pixels.tolist() == expected.tolist()
    assert fixed.splits["train"].ignored_pixels == 4 * 6 + 5


def test_colour_masks_without_a_colour_map_suggest_one_with_their_colours(tmp_path: Path):
    report = inspect_folder(colour_folder(tmp_path), 4, NAMES)
    fix = report.problems[0].fix
    assert '"[128,64,128]": ' in fix and '"[0,0,0]": ' in fix and "palette file" in fix
    # A colour map with single-channel masks is refused, as the data loader would.
    gray = tmp_path / "masks" / "train" / "train0.png"
    cv2.imwrite(str(gray), np.zeros((32, 32), np.uint8))
    mapped = inspect_folder(tmp_path, 4, NAMES, 255, COLOUR_KEYS)
    assert [Path(p.file).name for p in mapped.problems] == ["train0.png"]
    assert "data.label_map maps RGB colours" in mapped.problems[0].problem


def test_the_sample_cache_key_changes_with_the_colour_map(tmp_path: Path):
    root = colour_folder(tmp_path)
    pairs = [(root / "images" / "train" / "train0.png", root / "masks" / "train" / "train0.png")]
    keys = {
        FileSamples(pairs, MaskEncoder(4, 255, label_map, NAMES), 3, None).key()
        for label_map in (COLOUR_KEYS, COLOUR_KEYS | {"[0,0,0]": "sky"}, COLOUR_KEYS | {"[9,9,9]": 255})
    }
    assert len(keys) == 3


@pytest.mark.parametrize("form", ["colour_keys", "header.csv", "object.json"])
def test_training_evaluation_and_prediction_on_colour_masks(make_cfg, tmp_path: Path, form: str):
    root = colour_folder(tmp_path / "data")
    if form != "colour_keys":  # a palette file, relative to data.root; the names come from the file
        palette_files(root)
        data = [f"data.label_map={form}", "data.ignore_index=4"]
    else:
        data = ["data.class_names=[sky,building,road,car]", "data.ignore_index=255"]
    cfg = make_cfg("data=folder", "data.num_classes=4", "data.cache=off", *data, root=root)
    if form == "colour_keys":
        with open_dict(cfg):
            cfg.data.label_map = COLOUR_KEYS
    metrics = train(cfg)
    assert 0.0 <= metrics["val/miou"] <= 1.0 and "val/iou/road" in metrics

    checkpoint = Path(cfg.output_dir) / "checkpoints" / "best.ckpt"
    module = load_module(checkpoint)
    assert list(module.hparams.class_names) == NAMES
    assert module.palette.tolist() == [list(c) for c in CLASSES.values()]  # the annotation tool's colours
    eval_cfg = compose_named("eval", [f"ckpt_path={checkpoint}", "trainer=cpu", "split=val"])
    with open_dict(eval_cfg):
        eval_cfg.output_dir = str(tmp_path / "eval")
    assert evaluate(eval_cfg)["val/miou"] == pytest.approx(metrics["val/miou"], abs=1e-6)

    out = tmp_path / "predicted"
    overrides = [f"ckpt_path={checkpoint}", f"input={root / 'images' / 'val'}", f"output={out}", "device=cpu"]
    assert predict(compose_named("predict", overrides))["predicted"] == 2
    colour = cv2.imread(str(out / "colour" / "val0.png"))[..., ::-1]
    assert {tuple(c) for c in colour.reshape(-1, 3).tolist()} <= set(CLASSES.values())


def test_the_inspect_data_script_suggests_a_colour_map_and_reports_unmapped_colours(tmp_path: Path):
    root = colour_folder(tmp_path / "data", extra={"val1": (1, 2, 3)})
    palette_files(root)
    unset = run_inspect_data(tmp_path, "data=folder", f"data.root={root}")
    assert unset.returncode == 1 and '"[128,64,128]": ' in unset.stdout and "colour masks of 6 colours" in unset.stdout
    # Mapped, in-process (the script's path is the one above): what it prints and writes.
    mapped = inspect_data({"root": str(root), "num_classes": 4, "ignore_index": 4, "label_map": "list.json"})
    assert not mapped.ok and "colour [1, 2, 3] maps to no class: 5 pixels in 1 file(s)" in mapped.summary()
    report = json.loads(json.dumps(mapped.to_json()))
    assert report["class_names"] == NAMES and report["unmapped_colours"][0]["files"][0].endswith("val1.png")


def test_colour_keys_from_the_command_line_escape_their_commas():
    cfg = compose_cfg(
        ["data=folder", "data.root=x", "data.num_classes=2", r"data.label_map={128\,64\,128: 1, 0\,0\,0: 0}"]
    )
    encoder = MaskEncoder(2, None, cfg.data.label_map)
    pixels = np.array([[[128, 64, 128], [0, 0, 0]]], np.uint8)[..., ::-1]
    assert encoder.encode(np.ascontiguousarray(pixels), "m.png").tolist() == [[1, 0]]
