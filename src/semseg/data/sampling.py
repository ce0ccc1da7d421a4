"""Randomness that depends only on (seed, epoch, sample), so a resumed run replays the same epochs.

A run resumed from ``last.ckpt`` restarts in a fresh process: every random state that lived in
memory (the shuffling generator, albumentations' own generator in each loader worker, the
global torch/numpy/python generators) is gone. Saving them all would not be enough either:
persistent loader workers keep their own states, out of the checkpoint's reach. Instead each
epoch's randomness is derived from the run's seed and the epoch number:

- ``EpochSampler`` shuffles with ``(seed, epoch)`` (torch's DistributedSampler does exactly
  that, also for one process) and hands each index to the data set together with its epoch
  (``semseg.data.rare_class.RareClassSampler`` draws by class from ``(seed, epoch, rank)`` instead);
- the data set reseeds the augmentations for every sample with ``sample_seed(seed, epoch,
  index)``, whichever worker reads it;
- ``EpochSeeding`` reseeds the global generators (dropout, drop-path) at each epoch's first
  batch.

With deterministic settings, a run killed after epoch k and resumed then computes exactly what
the uninterrupted run computes (tests/test_resilience.py). None of the stack provides this:
Lightning reseeds nothing on resume and albumentations ignores the global seeds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from semseg.lightning_private import restart_training_iterator, training_loaders


def sample_seed(seed: int, epoch: int, index: int, *draw: int) -> int:
    """A 32-bit seed for one sample of one epoch, independent of worker and rank; ``draw``: what
    tells apart draws of one image in an epoch (``semseg.data.rare_class``)."""
    return int(np.random.SeedSequence([seed, epoch, index, *draw]).generate_state(1)[0])


class EpochSampler(DistributedSampler):
    """Shuffles by ``(seed, epoch)`` and yields ``(index, epoch)`` pairs.

    A ``DistributedSampler`` (``num_replicas=1`` on one device) so that Lightning keeps it under
    DDP instead of wrapping it. ``epoch_source``, when given, is asked for the epoch each time
    an epoch's iteration starts: Lightning calls ``set_epoch`` only after it has created the
    first iterator of a run, so a resumed run would otherwise replay epoch 0's order.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_source: Callable[[], int] | None = None,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.epoch_source = epoch_source
        self.iterated_epoch: int | None = None  # the epoch of the last iteration started

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.epoch_source is not None:
            self.set_epoch(self.epoch_source())
        epoch = self.iterated_epoch = self.epoch
        return ((index, epoch) for index in super().__iter__())


def seed_epoch(seed: int, epoch: int) -> None:
    """Seeds torch (every device), numpy and python's global generators for one epoch."""
    derived = int(np.random.SeedSequence([seed, epoch, 2**31]).generate_state(1)[0])
    torch.manual_seed(derived)
    np.random.seed(derived)
    random.seed(derived)


class EpochSeeding(L.Callback):
    """Reseeds the global generators at the first batch of every epoch from ``(seed, epoch)``,
    and makes a resumed run start its first epoch with that epoch's samples.

    The first batch rather than ``on_train_epoch_start``: Lightning skips that hook for the
    epoch it resumes in.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # To count the LR schedule's steps, Lightning loads the training data (and its loader
        # workers start prefetching) before it restores a checkpoint, i.e. for epoch 0; it then
        # reuses that iterator for the epoch it resumes at. A fresh one has the right epoch.
        epoch = trainer.fit_loop.epoch_progress.current.processed
        samplers = [getattr(loader, "sampler", None) for loader in training_loaders(trainer)]
        if any(isinstance(s, EpochSampler) and s.iterated_epoch not in (None, epoch) for s in samplers):
            restart_training_iterator(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            seed_epoch(self.seed, trainer.current_epoch)
