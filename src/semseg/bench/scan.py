"""The time to pair a large image-mask folder (what every run does at start-up)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from semseg.bench.timing import median
from semseg.data.pairing import list_pairs


def scan_seconds(pairs: int, repeats: int = 3) -> float:
    """Median seconds of ``list_pairs`` over a train split of ``pairs`` tiny image-mask pairs."""
    png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for kind in ("images", "masks"):
            split = root / kind / "train"
            split.mkdir(parents=True)
            for i in range(pairs):
                (split / f"{i:06d}.png").write_bytes(png)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            found = list_pairs(root, "train", require_masks=True)
            times.append(time.perf_counter() - started)
        if len(found) != pairs:
            raise RuntimeError(f"the scan found {len(found)} of {pairs} pairs")
    return median(times)
