"""Test-only callbacks that crash a training run on purpose, at a chosen point."""

from __future__ import annotations

import os
import signal

import lightning as L


class SigkillAt(L.Callback):
    """Kills its own process with SIGKILL before batch ``batch`` of epoch ``epoch``: a crash that
    no handler sees (out of memory, a lost node), unlike SIGTERM."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class RaiseOnRank(L.Callback):
    """Raises an error on one DDP rank only, before batch ``batch`` of the first epoch."""

    def __init__(self, rank: int, batch: int = 1):
        self.rank, self.batch = rank, batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and batch_idx == self.batch:
            raise RuntimeError(f"rank {self.rank} failed on purpose")


class DamageFileAfterEpoch(L.Callback):
    """Overwrites ``path`` with a truncated PNG after training epoch ``epoch`` (its checkpoint saved):
    a data file that becomes unreadable under a running training, after the start-up check."""

    def __init__(self, path: str, epoch: int = 0):
        self.path, self.epoch = path, epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            with open(self.path, "wb") as file:
                file.write(b"\x89PNG\r\n\x1a\n cut short")
