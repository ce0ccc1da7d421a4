"""Timing that a GPU cannot fool: warm-up, synchronise, time, synchronise."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import lightning as L
import torch


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(step: Callable[[], None], batch_size: int, steps: int, warmup: int, device: torch.device) -> float:
    """Images per second of ``step`` (one batch), timed over ``steps`` calls after ``warmup``."""
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return batch_size * steps / (time.perf_counter() - started)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


class StepTimer(L.Callback):
    """Times training batches ``warmup`` .. ``warmup + steps - 1`` of a Trainer run, then stops it.

    Counts batches across epochs; the clock runs from the start of the first timed batch (data
    already fetched) to the end of the last, as the plain loop's does.
    """

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.seen, self.images, self.started, self.seconds = 0, 0, 0.0, None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.seen == self.warmup:
            synchronize(pl_module.device)
            self.started = time.perf_counter()
        if self.seen >= self.warmup:
            self.images += batch["image"].shape[0]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.warmup + self.steps:
            synchronize(pl_module.device)
            self.seconds = time.perf_counter() - self.started
            trainer.should_stop = True

    @property
    def images_per_s(self) -> float:
        if self.seconds is None:
            raise RuntimeError(f"the run ended after {self.seen} batches, before {self.warmup + self.steps}")
        return self.images / self.seconds
