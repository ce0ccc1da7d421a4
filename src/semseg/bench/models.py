"""Each architecture's forward+backward speed and peak memory at one input size, across
precision, memory format and torch.compile; and its share of the GPU's bf16 peak (MFU)."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from semseg.bench.timing import images_per_s
from semseg.bench.training import autocast
from semseg.models import build_model, count_gflops

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched by device name.
BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


@dataclass
class ModelResult:
    model: str
    precision: str
    channels_last: bool
    compiled: bool
    images_per_s: float
    peak_memory_gb: float | None  # CUDA only
    train_gflops_per_image: float  # forward + backward, ~3x the forward
    mfu: float | None  # share of the bf16 peak, when the device's peak is known

    def row(self) -> dict:
        return asdict(self)


def bf16_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_FLOPS.items() if key in name), None)


def bench_model(
    name: str,
    model_cfg: DictConfig,
    *,
    num_classes: int,
    in_channels: int,
    size: int,
    batch_size: int,
    precisions: list[str],
    channels_last: list[bool],
    compile_modes: list[bool],
    warmup: int,
    steps: int,
    device: torch.device,
    deadline: float = math.inf,
) -> list[ModelResult]:
    """Forward+backward images/s of one architecture for every combination of the settings, in
    order, until ``time.monotonic()`` passes ``deadline`` (the rest are left out)."""
    cfg = dict(model_cfg) | {"encoder_weights": None}
    forward_gflops = count_gflops(build_model(cfg, in_channels, num_classes), in_channels, size, size)
    train_gflops = 3 * forward_gflops  # backward ~ twice the forward (input and weight gradients)
    peak = bf16_peak_flops(device)
    images = torch.randn(batch_size, in_channels, size, size, device=device)
    masks = torch.randint(0, num_classes, (batch_size, size, size), device=device)
    results = []
    for precision, last, compiled in itertools.product(precisions, channels_last, compile_modes):
        if time.monotonic() > deadline:
            break
        net = build_model(cfg | {"channels_last": last}, in_channels, num_classes).to(device).train()
        run = torch.compile(net) if compiled else net

        def step(run=run, net=net, precision=precision) -> None:
            with autocast(precision, device):
                loss = F.cross_entropy(run(images), masks)
            loss.backward()
            net.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        speed = images_per_s(step, batch_size, steps, warmup, device)
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        mfu = speed * train_gflops * 1e9 / peak if peak else None
        results.append(ModelResult(name, precision, last, compiled, speed, memory, train_gflops, mfu))
        del net, run
    return results
