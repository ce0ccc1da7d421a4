"""data.split_files: splits from list files (VOC's stem lists, CSVs of paths), images and masks anywhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import open_dict

from semseg.data.inspection import inspect_data
from semseg.data.layout import DataLayout
from semseg.data.pairing import list_pairs
from semseg.errors import ConfigError, DataError
from semseg.inference.evaluate import evaluate
from semseg.training.train import train
from tests.conftest import compose_named

LISTS = "ImageSets/Segmentation"


@pytest.fixture(scope="module")
def voc_root(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny data set laid out as Pascal VOC is: every image in JPEGImages, every mask in
    SegmentationClass, each split a list of stems in ImageSets/Segmentation."""
    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    lists = root / "ImageSets" / "Segmentation"
    for folder in (root / "JPEGImages", root / "SegmentationClass", lists):
        folder.mkdir(parents=True)
    for split in ("train", "val", "test"):
        stems = []
        for image in sorted((tiny_root / "images" / split).iterdir()):
            stem = f"{split}_{image.stem}"
            shutil.copy(image, root / "JPEGImages" / f"{stem}{image.suffix}")
            shutil.copy(tiny_root / "masks" / split / f"{image.stem}.png", root / "SegmentationClass" / f"{stem}.png")
            stems.append(stem)
        (lists / f"{split}.txt").write_text("# one stem per line\n" + "\n".join(stems) + "\n\n")
    return root


def voc_data(root: Path, **changes) -> dict:
    data = {"root": str(root), "num_classes": 5, "image_folder": "JPEGImages", "mask_folder": "SegmentationClass"}
    data["split_files"] = {s: f"ImageSets/Segmentation/{s}.txt" for s in ("train", "val", "test")}
    return {**data, **changes}


def test_stem_lists_pair_every_listed_sample_with_its_image_and_mask(voc_root, tiny_root):
    layout = DataLayout.of(voc_data(voc_root))
    for split in ("train", "val", "test"):
        pairs = layout.list_pairs(split)
        expected = list_pairs(tiny_root, split)
        assert [(i.name, m.name) for i, m in pairs] == [(f"{split}_{i.name}", f"{split}_{m.name}") for i, m in expected]
        assert all(i.parent.name == "JPEGImages" and m.parent.name == "SegmentationClass" for i, m in pairs)
    report = inspect_data(voc_data(voc_root))
    assert not report.problems
    assert {split: r.pairs for split, r in report.splits.items()} == {"train": 8, "val": 4, "test": 4}


def test_a_csv_of_paths_names_images_and_masks_in_any_folders(tiny_root, tmp_path):
    outside = tmp_path / "elsewhere"  # masks outside data.root, by absolute path
    shutil.copytree(tiny_root / "masks", outside)
    rows = ["image,mask"]  # a header, which is optional
    for image in sorted((tiny_root / "images" / "train").iterdir()):
        rows.append(f"images/train/{image.name},{outside / 'train' / (image.stem + '.png')}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "val.csv").write_text(  # no header
        "".join(
            f"images/val/{i.name},masks/val/{i.stem}.png\n" for i in sorted((tiny_root / "images" / "val").iterdir())
        )
    )
    data = {
        "root": str(tiny_root),
        "num_classes": 5,
        "split_files": {"train": str(tmp_path / "train.csv"), "val": str(tmp_path / "val.csv")},
    }
    layout = DataLayout.of(data)
    assert [(i, m.name) for i, m in layout.list_pairs("train")] == [
        (i, m.name) for i, m in list_pairs(tiny_root, "train")
    ]
    assert layout.list_pairs("val") == list_pairs(tiny_root, "val")
    assert not layout.has_split("test")  # not listed: the optional split is absent
    report = inspect_data(data)
    assert not report.problems and report.splits["train"].counts.pixels.sum() == 8 * 32 * 32


def test_the_doctor_names_the_list_line_and_the_fix_for_every_listed_sample_without_its_files(voc_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    lists = root / "ImageSets" / "Segmentation"
    train = lists / "train.txt"
    train.write_text(train.read_text() + "not_there\n")
    dropped = sorted((root / "SegmentationClass").glob("val_*"))[1]
    dropped.unlink()
    data = voc_data(
        root,
        split_files={
            "train": "ImageSets/Segmentation/train.txt",
            "val": "ImageSets/Segmentation/val.txt",
            "test": "lists/gone.txt",
        },
    )
    report = inspect_data(data)
    found = {p.file: p for p in report.problems}
    line = len(train.read_text().splitlines())
    assert "names not_there, which has no image in" in found[f"{train}:{line}"].problem
    assert "data.image_folder" in found[f"{train}:{line}"].fix
    val_problem = next(p for p in report.problems if dropped.stem in p.problem)
    assert val_problem.file.startswith(str(lists / "val.txt") + ":") and "no mask in" in val_problem.problem
    assert found[str(root / "lists" / "gone.txt")].problem == "no such list file."
    with pytest.raises(DataError, match="not_there"):
        report.raise_for_problems()


def test_a_test_list_of_images_without_masks_is_an_unlabelled_split(voc_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    for mask in (root / "SegmentationClass").glob("test_*"):
        mask.unlink()
    layout = DataLayout.of(voc_data(root))
    assert layout.has_split("test") and not layout.has_labels("test")
    assert all(mask is None for _, mask in layout.list_pairs("test", require_masks=False))
    assert not inspect_data(voc_data(root)).problems  # an unlabelled test split is no problem
    assert layout.has_labels("val")


def test_stems_with_folders_and_two_images_of_one_stem(tiny_root, tmp_path):
    root = tmp_path / "cities"
    for city in ("aachen", "bonn"):
        for kind, source in (("img", "images"), ("gt", "masks")):
            (root / kind / city).mkdir(parents=True)
            first = sorted((tiny_root / source / "train").iterdir())[0]
            shutil.copy(first, root / kind / city / "frame.png")
    (root / "train.txt").write_text("aachen/frame\nbonn/frame\n")
    layout = DataLayout.of(
        {"root": str(root), "split_files": {"train": "train.txt"}, "image_folder": "img", "mask_folder": "gt"}
    )
    pairs, problems = layout.find_pairs("train")
    assert [i.relative_to(root).as_posix() for i, _ in pairs] == ["img/aachen/frame.png", "img/bonn/frame.png"]
    # Samples are named by stem (predictions, pictures): both are "frame", so one would overwrite the other.
    assert len(problems) == 1 and "shares its stem with" in problems[0].problem


@pytest.mark.parametrize(
    ("split_files", "message"),
    [("lists/train.txt", "give one list file per split"), ({"training": "t.txt"}, r"splits \['training'\]")],
)
def test_a_malformed_split_files_key_is_refused(split_files, message):
    with pytest.raises(ConfigError, match=message):
        DataLayout.of({"root": "data", "split_files": split_files})


def test_training_and_evaluation_on_voc_lists_with_the_voc_preset(voc_root, make_cfg, tmp_path):
    test_list = f"+data.split_files.test={LISTS}/test.txt"  # VOC's own test list has no masks; this one has
    cfg = make_cfg("data=voc", test_list, "data.image_size=null", root=voc_root)
    assert cfg.data.num_classes == 21 and cfg.data.image_folder == "JPEGImages"
    metrics = train(cfg)
    assert "test/miou" in metrics  # the listed test split was found, labelled, and scored
    report = json.loads((Path(cfg.output_dir) / "data_report.json").read_text())
    assert {split: r["pairs"] for split, r in report["splits"].items()} == {"train": 8, "val": 4, "test": 4}
    eval_cfg = compose_named("eval", [f"ckpt_path={Path(cfg.output_dir) / 'checkpoints' / 'best.ckpt'}", "trainer=cpu"])
    with open_dict(eval_cfg):
        eval_cfg.output_dir = str(tmp_path / "eval")
    scores = evaluate(eval_cfg)  # the checkpoint's data config carries the list files
    assert scores["test/miou"] == pytest.approx(metrics["test/miou"], abs=1e-6)
