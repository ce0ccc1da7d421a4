"""Finished run folders (no checkpoints) whose val split was scored by models of a chosen accuracy:
per-image scores and metrics.json, as training writes them, for report.py's tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from semseg.run_folder import RunFolder
from semseg.task.per_image import read_per_image_scores, write_per_image_scores

CLASSES = ["road", "car", "pole"]
IMAGES = [f"frame_{i:03d}" for i in range(40)]


def records(accuracy: float, rng: np.random.Generator, images: list[str] = IMAGES) -> tuple:
    """Per-image confusion matrices of a model that labels each pixel right with ``accuracy``
    (wrong ones spread over the other classes); images of varying size and class mix."""
    confusion = np.zeros((len(images), 3, 3), dtype=np.int64)
    for n in range(len(images)):
        pixels = rng.multinomial(rng.integers(500, 3000), [0.7, 0.25, 0.05])
        for target, count in enumerate(pixels):
            right = rng.binomial(count, accuracy)
            wrong = rng.multinomial(count - right, [0.5, 0.5])
            others = [c for c in range(3) if c != target]
            confusion[n, target, target] = right
            confusion[n, target, others] = wrong
    boundary = np.stack([confusion.diagonal(axis1=1, axis2=2) // 4, confusion.sum(2) // 3], axis=1)
    return np.array(images), confusion, boundary


def run_with_scores(folder: Path, loss: str, seed: int, accuracy: float, rng: np.random.Generator) -> None:
    """A finished run folder (no checkpoint) whose val split was scored by such a model."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"loss={loss}", f"seed={seed}"]))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    choices = {"model": "unet", "loss": loss}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    path = RunFolder(folder).per_image_scores
    write_per_image_scores(path, {"val": records(accuracy, rng)}, CLASSES, None, "multiclass")
    scores = read_per_image_scores(path)["val"]
    means, per_class = scores.scores_of(scores.confusion.sum(0), scores.boundary.sum(0))
    metrics = {f"val/{k}": float(v) for k, v in means.items()}
    metrics |= {f"val/iou/{c}": float(v) for c, v in zip(CLASSES, per_class["iou"], strict=True)}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def sweep(folder: Path, accuracies: dict[str, list[float]], seed: int = 0) -> Path:
    """A multirun folder: per loss, one run per listed accuracy (its seeds)."""
    rng = np.random.default_rng(seed)
    job = 0
    for loss, per_seed in accuracies.items():
        for run_seed, accuracy in enumerate(per_seed):
            run_with_scores(folder / str(job), loss, run_seed, accuracy, rng)
            job += 1
    return folder
