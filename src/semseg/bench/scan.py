"""What a large data set costs every run at start-up: pairing its folders, and the data check
(image headers, mask statistics) before its caches exist and once they do."""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from semseg.bench.timing import median
from semseg.data.inspection import inspect_data
from semseg.data.pairing import list_pairs

NUM_CLASSES = 3
SPLIT_SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}


def write_pairs(root: Path, pairs: int) -> None:
    """``pairs`` tiny PNG pairs (an 8x8 RGB image, a mask of every class) split 80/10/10."""
    image = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8))[1].tobytes()
    mask = cv2.imencode(".png", (np.arange(64).reshape(8, 8) % NUM_CLASSES).astype(np.uint8))[1].tobytes()
    counts = {split: int(pairs * share) for split, share in SPLIT_SHARES.items()}
    counts["train"] += pairs - sum(counts.values())
    for kind, content in (("images", image), ("masks", mask)):
        for split, count in counts.items():
            folder = root / kind / split
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i:07d}.png").write_bytes(content)


@contextmanager
def own_cache(folder: Path):
    """semseg's caches in ``folder`` (not the user's) while measuring cold and warm starts."""
    before = os.environ.get("SEMSEG_CACHE_DIR")
    os.environ["SEMSEG_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            del os.environ["SEMSEG_CACHE_DIR"]
        else:
            os.environ["SEMSEG_CACHE_DIR"] = before


def startup_seconds(pairs: int, repeats: int = 3) -> dict[str, float]:
    """Seconds, at ``pairs`` image-mask pairs, of: ``scan_s``, pairing the train split (median of
    ``repeats``); ``check_cold_s``, the data check training starts with, with no cache (every mask
    read); ``check_warm_s``, the same check again (median of ``repeats``), what every later run pays.

    Raises:
        RuntimeError: the scan missed pairs, or the check found problems in a clean set.
    """
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        write_pairs(root, pairs)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            found = list_pairs(root, "train", require_masks=True)
            times.append(time.perf_counter() - started)
        if len(found) != len(os.listdir(root / "images" / "train")):
            raise RuntimeError(f"the scan found {len(found)} pairs in a train split of more")
        data = {"root": str(root), "num_classes": NUM_CLASSES}
        with own_cache(Path(folder) / "cache"):
            started = time.perf_counter()
            report = inspect_data(data)
            cold = time.perf_counter() - started
            warm = []
            for _ in range(repeats):
                started = time.perf_counter()
                inspect_data(data)
                warm.append(time.perf_counter() - started)
        if report.problems or sum(split.pairs for split in report.splits.values()) != pairs:
            raise RuntimeError(f"the data check of {pairs} clean pairs: {report.problems[:3]}")
    return {"scan_s": median(times), "check_cold_s": cold, "check_warm_s": median(warm)}
