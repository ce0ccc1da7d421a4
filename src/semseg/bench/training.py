"""The semseg pipeline (Trainer, DataModule, callbacks, logger) against a plain PyTorch loop on
the same model, data and batch; the data loader alone against the model's consumption."""

from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext

import lightning as L
import torch
from omegaconf import DictConfig, open_dict

from semseg.bench.timing import StepTimer, images_per_s, synchronize
from semseg.builders import build_run
from semseg.run_folder import RunFolder
from semseg.task.module import SegmentationModule
from semseg.trainer_defaults import trainer_kwargs, uses_cuda
from semseg.training.checkpoints import build_callbacks
from semseg.training.loggers import build_logger, run_identity


def bench_device(cfg: DictConfig) -> torch.device:
    """The device the Trainer of ``cfg`` trains on (one device)."""
    return torch.device("cuda" if uses_cuda(cfg.trainer) else "cpu")


def autocast(precision: str, device: torch.device):
    """What Lightning's mixed-precision plugins do around forward and loss."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def pipeline_images_per_s(cfg: DictConfig, warmup: int, steps: int) -> float:
    """Training images/s of ``trainer.fit`` with the config's callbacks and logger (validation
    off: it is not training), timed over ``steps`` batches after ``warmup``."""
    timer = StepTimer(warmup, steps)
    with tempfile.TemporaryDirectory() as folder:
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.output_dir = folder  # checkpoints and logs of the run go to a scratch folder
        _, module, datamodule = build_run(cfg, cfg.seed)
        callbacks = build_callbacks(cfg.get("callbacks"), RunFolder(folder), validates=False)
        kwargs = trainer_kwargs(cfg.trainer, cfg.data) | {
            "max_steps": warmup + steps,
            "max_epochs": -1,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
        }
        logger = build_logger(cfg.get("logger"), run_identity(cfg))
        trainer = L.Trainer(**kwargs, callbacks=[*callbacks, timer], logger=logger, default_root_dir=folder)
        trainer.fit(module, datamodule=datamodule)
    return timer.images_per_s


def _train_step(module: SegmentationModule, optimizer, scheduler, precision: str, device: torch.device):
    """One plain optimisation step on a batch: what a hand-written loop does."""

    def step(batch: dict) -> None:
        moved = {k: batch[k].to(device, non_blocking=True) for k in ("image", "mask")}
        prepared = module.prepare_batch(moved)  # what Lightning's on_after_batch_transfer does
        images, masks = prepared["image"], prepared["mask"]
        with autocast(precision, device):
            loss = module.loss(module.net(images), masks)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    return step


def _plain_parts(cfg: DictConfig):
    """The module, step function, training loader and device of a hand-written loop for ``cfg``."""
    _, module, datamodule = build_run(cfg, cfg.seed)
    device = bench_device(cfg)
    module.to(device).train()
    loader = _train_loader(datamodule)
    optimizer, scheduler = module.build_optimization(total_steps=len(loader) * max(1, cfg.trainer.max_epochs))
    precision = trainer_kwargs(cfg.trainer, cfg.data)["precision"]
    return module, _train_step(module, optimizer, scheduler, precision, device), loader, device


def _train_loader(datamodule):
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule.train_dataloader()


def plain_loop_images_per_s(cfg: DictConfig, warmup: int, steps: int) -> float:
    """Training images/s of a hand-written loop over the same model, loss, optimizer, schedule,
    data loader and precision, timed as ``StepTimer`` times the pipeline."""
    _, step, loader, device = _plain_parts(cfg)
    return _timed_loop(step, _endless(loader), device, warmup, steps)


def _timed_loop(step, batches, device: torch.device, warmup: int, steps: int) -> float:
    """Images/s of ``step`` over ``steps`` batches after ``warmup``, fetching included."""
    images, started = 0, 0.0
    for seen in range(warmup + steps):
        batch = next(batches)
        if seen == warmup:
            synchronize(device)
            started = time.perf_counter()
        images += batch["image"].shape[0] if seen >= warmup else 0
        step(batch)
    synchronize(device)
    return images / (time.perf_counter() - started)


def preloaded_loop_images_per_s(cfg: DictConfig, warmup: int, steps: int) -> float:
    """Training images/s of the loop a user writes without a data pipeline: the training split
    decoded, resized and normalised once into memory as tensors, then batches drawn from it in
    a shuffled order, each image flipped horizontally with probability 1/2 (the cheapest common
    augmentation), on the same model, loss, optimizer and schedule as the pipeline."""
    module, step, loader, device = _plain_parts(cfg)
    source = loader.dataset.source
    del loader  # its workers are not needed: the set is read here, once, untimed
    samples = [source[i] for i in range(len(source))]
    preloaded = module.prepare_batch(
        {
            "image": torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image, _ in samples]),
            "mask": torch.stack([torch.from_numpy(mask) for _, mask in samples]),
        }
    )
    images, masks = preloaded["image"], preloaded["mask"]
    del samples, preloaded
    batch_size, generator = cfg.data.batch_size, torch.Generator().manual_seed(0)

    def batches():
        while True:
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                index = order[start : start + batch_size]
                flip = torch.rand(batch_size, generator=generator) < 0.5
                x, y = images[index], masks[index]
                x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
                yield {"image": x, "mask": y}

    return _timed_loop(step, batches(), device, warmup, steps)


def consumption_images_per_s(cfg: DictConfig, warmup: int, steps: int) -> float:
    """Images/s the model trains at when data costs nothing: one batch, already on the device."""
    module, step, loader, device = _plain_parts(cfg)
    batch = module.prepare_batch({k: v.to(device) for k, v in next(iter(loader)).items() if k in ("image", "mask")})
    return images_per_s(lambda: step(batch), batch["image"].shape[0], steps, warmup, device)


def loader_images_per_s(cfg: DictConfig, warmup: int, steps: int) -> tuple[float, int]:
    """Images/s the training data loader delivers alone (default workers and augmentations), and
    its worker count."""
    loader = _train_loader(build_run(cfg, cfg.seed)[2])
    batches = _endless(loader)
    for _ in range(warmup):
        next(batches)
    started, images = time.perf_counter(), 0
    for _ in range(steps):
        images += next(batches)["image"].shape[0]
    return images / (time.perf_counter() - started), loader.num_workers


def _endless(loader):
    """Batches epoch after epoch (the epoch advancing, as Lightning sets it)."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1
