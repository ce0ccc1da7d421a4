"""Data that changes under a running training: a file that becomes unreadable after the start-up
check stops training with one line naming it, and the last checkpoint stays; a corrupted
mask-statistics cache is rebuilt, not trusted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from semseg.data.inspection import inspect_folder
from semseg.errors import DataError
from semseg.files import cache_dir
from semseg.inference.checkpoint import read_checkpoint
from semseg.run_folder import RunFolder
from semseg.training.train import train


def test_an_image_that_becomes_unreadable_mid_training_is_named_and_the_checkpoint_kept(
    make_cfg, tiny_root: Path, tmp_path: Path
):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    victim = sorted((root / "images" / "train").iterdir())[0]
    # No sample cache: every epoch reads the files again, as with a set too large to cache.
    cfg = make_cfg(
        "trainer.max_epochs=3",
        "data.cache=off",
        "+callbacks.damage._target_=tests.crash.DamageFileAfterEpoch",
        f"+callbacks.damage.path={victim}",
        root=root,
    )
    with pytest.raises(DataError) as caught:
        train(cfg)
    message = str(caught.value)
    assert str(victim) in message and "cannot read this image" in message and "\n" not in message
    last = RunFolder(cfg.output_dir).last_checkpoint
    assert read_checkpoint(last)["epoch"] == 0  # the epoch before the damage, intact and loadable


def test_a_corrupted_mask_statistics_cache_is_rebuilt(tiny_root: Path, tmp_path: Path):
    root = tmp_path / "corrupted_cache_set"  # a name of its own: the cache folder is the session's
    shutil.copytree(tiny_root, root)
    args = (root, 5, None, None, None, 3)
    first = inspect_folder(*args)
    caches = sorted((cache_dir() / "masks").glob(f"{root.name}-*.json"))
    assert len(caches) == 1, "the first inspection writes its cache"
    for path in caches:
        path.write_text('{"not": "the cache"')  # cut short, as by a full disk or a killed writer
    again = inspect_folder(*args)
    assert again.train_counts.pixels.tolist() == first.train_counts.pixels.tolist()
    assert all(path.read_text().startswith("{") and path.read_text().rstrip().endswith("}") for path in caches)
