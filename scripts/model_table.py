"""The README's model table: parameters, GFLOPs and CPU forward latency of each model config.

    python scripts/model_table.py                       # 512x512, 21 classes, Markdown to stdout
    python scripts/model_table.py --size 256 --repeats 5 --output models.md --only FCN SegFormer

Each row is built from the real ``conf/model`` configs with Hydra overrides, exactly as
``scripts/train.py model=...`` builds it. FLOPs are counted by ``torch.utils.flop_counter`` for one
forward pass of one image, two per multiply-add (papers such as SegFormer's count multiply-adds,
half of this). Latency is the median wall-clock time of ``--repeats`` forward passes after one
warm-up, batch 1, fp32, no gradients, on every CPU core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Label -> overrides of conf/train.yaml. The book's arc, on one encoder (ResNet-18) where it can be.
ROWS: dict[str, list[str]] = {
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


def measure(overrides: list[str], size: int, num_classes: int, repeats: int) -> tuple[float, float, float]:
    """(parameters in millions, GFLOPs, median CPU latency in ms) of one model config."""
    import torch

    from semseg.models import build_model, count_gflops, count_parameters

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        model_cfg = compose(config_name="train", overrides=overrides).model
    net = build_model(model_cfg, in_channels=3, num_classes=num_classes).eval()
    params = count_parameters(net) / 1e6
    gflops = count_gflops(net, 3, size, size)  # also the warm-up of the timing below
    image = torch.randn(1, 3, size, size)
    with torch.no_grad():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            net(image)
            times.append(time.perf_counter() - start)
    return params, gflops, statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square input side in pixels (default 512)")
    parser.add_argument("--num-classes", type=int, default=21, help="output classes (default 21, as Pascal VOC)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per model (default 3)")
    parser.add_argument("--output", type=Path, help="also write the Markdown table to this file")
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="only the rows whose label contains TEXT")
    args = parser.parse_args()
    rows = {k: v for k, v in ROWS.items() if not args.only or any(text in k for text in args.only)}
    import torch  # after parsing: --help need not wait for it

    torch.set_num_threads(os.cpu_count() or 1)
    lines = [
        f"| Model | Params (M) | GFLOPs @{args.size}x{args.size} | CPU latency (ms) |",
        "|---|---:|---:|---:|",
    ]
    for label, overrides in rows.items():
        params, gflops, latency = measure(overrides, args.size, args.num_classes, args.repeats)
        lines.append(f"| {label} | {params:.1f} | {gflops:.2f} | {latency:.0f} |")
        print(lines[-1], file=sys.stderr, flush=True)  # progress: the CPU timings take a while
    footer = (
        f"\n{args.num_classes} classes, batch 1, fp32, median of {args.repeats} forward passes on "
        f"{torch.get_num_threads()} CPU threads; FLOPs count 2 per multiply-add (torch.utils.flop_counter)."
    )
    table = "\n".join(lines) + "\n" + footer + "\n"
    print(table)
    if args.output:
        args.output.write_text(table)


if __name__ == "__main__":
    main()
