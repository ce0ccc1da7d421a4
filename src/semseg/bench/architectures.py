"""Each architecture's forward+backward speed and peak memory at one input size, across
precision, memory format and torch.compile; and its share of the GPU's bf16 peak (MFU). Also the
model table of docs/models.md (``scripts/model_table.py``): parameters, GFLOPs and CPU forward
latency of each model config."""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from semseg.bench.timing import images_per_s, median
from semseg.bench.training import autocast
from semseg.config_resolvers import CONF_DIR
from semseg.files import atomic_path
from semseg.models import build_model, count_gflops, count_parameters

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched by device name.
BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}

# The model table's rows: label -> overrides of conf/train.yaml. The book's arc, on one encoder
# (ResNet-18) where it can be.
MODEL_TABLE_ROWS: dict[str, list[str]] = {
    "FCN-32s (ResNet-18)": ["model=fcn", "model.variant=32s"],
    "FCN-16s (ResNet-18)": ["model=fcn", "model.variant=16s"],
    "FCN-8s (ResNet-18)": ["model=fcn", "model.variant=8s"],
    "FCN-8s (VGG-16 encoder, as in the paper)": ["model=fcn", "model.encoder_name=vgg16"],
    "U-Net (ResNet-18)": ["model=unet"],
    "U-Net (ResNet-34)": ["model=unet", "model.encoder_name=resnet34"],
    "DeepLabV3+ (ResNet-18, OS 16)": ["model=deeplabv3plus"],
    "DeepLabV3+ (ResNet-18, OS 8)": ["model=deeplabv3plus", "model.output_stride=8"],
    "DeepLabV3+ (ResNet-50, OS 16)": ["model=deeplabv3plus", "model.encoder_name=resnet50"],
    "SegFormer-B0": ["model=segformer"],
    "SegFormer-B2": ["model=segformer", "model.encoder_name=mit_b2"],
}


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


def measure(overrides: list[str], size: int, num_classes: int, repeats: int) -> tuple[float, float, float]:
    """(parameters in millions, GFLOPs, median CPU latency in ms) of one model config: ``overrides``
    of conf/train.yaml, composed as ``scripts/train.py model=...`` composes them; batch 1, fp32, no
    gradients, ``repeats`` timed forward passes."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        model_cfg = compose(config_name="train", overrides=overrides).model
    net = build_model(model_cfg, in_channels=3, num_classes=num_classes).eval()
    params = count_parameters(net) / 1e6
    gflops = count_gflops(net, 3, size, size)  # also the warm-up of the timing below
    image = torch.randn(1, 3, size, size)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            net(image)
            times.append(time.perf_counter() - start)
    return params, gflops, median(times) * 1e3


def model_table(
    size: int = 512,
    num_classes: int = 21,
    repeats: int = 3,
    only: Sequence[str] | None = None,
    output: Path | None = None,
) -> str:
    """The model table in Markdown, with a footer saying how it was measured: one ``measure`` row per
    ``MODEL_TABLE_ROWS`` label that contains some text of ``only`` (every label without it), on
    every CPU core. Each row goes to stderr as it is measured; the table also to ``output``, if given."""
    rows = {k: v for k, v in MODEL_TABLE_ROWS.items() if not only or any(text in k for text in only)}
    torch.set_num_threads(os.cpu_count() or 1)
    # Not semseg.markdown.markdown_table: the number columns are right-aligned, and rows print as they come.
    lines = [f"| Model | Params (M) | GFLOPs @{size}x{size} | CPU latency (ms) |", "|---|---:|---:|---:|"]
    for label, overrides in rows.items():
        params, gflops, latency = measure(overrides, size, num_classes, repeats)
        lines.append(f"| {label} | {params:.1f} | {gflops:.2f} | {latency:.0f} |")
        print(lines[-1], file=sys.stderr, flush=True)  # progress: the CPU timings take a while
    footer = (
        f"\n{num_classes} classes, batch 1, fp32, median of {repeats} forward passes on "
        f"{torch.get_num_threads()} CPU threads; FLOPs count 2 per multiply-add (torch.utils.flop_counter)."
    )
    table = "\n".join(lines) + "\n" + footer + "\n"
    if output:
        with atomic_path(output) as tmp:
            tmp.write_text(table)
    return table
