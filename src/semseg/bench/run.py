"""Runs the benchmark's parts (conf/benchmark.yaml), prints ratios and tables, writes
``benchmark.json``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf, open_dict

from semseg.bench.models import bench_model
from semseg.bench.scan import scan_seconds
from semseg.bench.timing import median
from semseg.bench.training import (
    bench_device,
    consumption_images_per_s,
    loader_images_per_s,
    pipeline_images_per_s,
    plain_loop_images_per_s,
)
from semseg.data.datamodule import default_num_workers
from semseg.errors import ConfigError
from semseg.files import write_json_atomic
from semseg.report import markdown_table

log = logging.getLogger(__name__)

# The targets, printed beside the measured values.
TARGETS = {"pipeline_over_plain": 0.97, "loader_over_consumption": 2.0, "scan_s": 2.0}


def side_by_side(first, second, cfg: DictConfig, names: tuple[str, str], ratio: str) -> dict:
    """Alternates two measurements ``cfg.bench.repeats`` times (so that drifts of the machine hit
    both alike): the median of each under ``names``, the median of the per-repeat ratios first /
    second under ``ratio``, and each repeat's ratio under ``<ratio>_each``."""
    bench = cfg.bench
    a, b = [], []
    for _ in range(bench.repeats):
        b.append(second(cfg, bench.warmup, bench.steps))
        a.append(first(cfg, bench.warmup, bench.steps))
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return {names[0]: median(a), names[1]: median(b), ratio: median(ratios), f"{ratio}_each": ratios}


def pipeline_part(cfg: DictConfig) -> dict:
    """(a) The pipeline against the plain loop."""
    names = ("pipeline_images_per_s", "plain_loop_images_per_s")
    return side_by_side(pipeline_images_per_s, plain_loop_images_per_s, cfg, names, "pipeline_over_plain")


def loader_part(cfg: DictConfig) -> dict:
    """(b) The data loader alone against the model's consumption (data already on the device)."""
    names = ("loader_images_per_s", "consumption_images_per_s")
    workers = default_num_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    measured = side_by_side(loader_images_per_s, consumption_images_per_s, cfg, names, "loader_over_consumption")
    return {**measured, "num_workers": workers}


def models_part(cfg: DictConfig) -> list[dict]:
    """(c) Each architecture's forward+backward images/s, peak memory and MFU."""
    bench, rows = cfg.bench, []
    for name in bench.models:
        model, *overrides = str(name).split()
        model_cfg = compose(config_name="train", overrides=[f"model={model}", *overrides]).model
        log.info(f"benchmarking {name} ({OmegaConf.to_container(model_cfg)})")
        results = bench_model(
            name,
            model_cfg,
            num_classes=cfg.data.num_classes,
            in_channels=cfg.data.in_channels,
            size=bench.size,
            batch_size=bench.batch_size,
            precisions=list(bench.precisions),
            channels_last=list(bench.channels_last),
            compile_modes=list(bench.compile),
            warmup=bench.warmup,
            steps=bench.steps,
            device=bench_device(cfg),
        )
        rows += [r.row() for r in results]
    return rows


def optimizer_part(cfg: DictConfig) -> dict:
    """(e) Training steps (one batch already on the device) with the configured optimizer against
    the same optimizer with ``fused: false``: what the fused default gains."""
    unfused = cfg.copy()
    with open_dict(unfused):
        unfused.optimizer.fused = False

    def unfused_steps(_cfg: DictConfig, warmup: int, steps: int) -> float:
        return consumption_images_per_s(unfused, warmup, steps)

    names = ("fused_images_per_s", "unfused_images_per_s")
    return side_by_side(consumption_images_per_s, unfused_steps, cfg, names, "fused_over_unfused")


PARTS = {"pipeline": pipeline_part, "loader": loader_part, "models": models_part, "optimizer": optimizer_part}


def check_parts(cfg: DictConfig) -> None:
    """Raises ``ConfigError`` for a part that cannot run, before any part has spent minutes."""
    for part in cfg.bench.parts:
        if part != "scan" and part not in PARTS:
            raise ConfigError(f"bench.parts: unknown part {part!r}; choose from {[*PARTS, 'scan']}.")
    if "optimizer" in cfg.bench.parts and "fused" not in cfg.optimizer:
        raise ConfigError(
            f"bench.parts: 'optimizer' compares optimizer.fused true and false, and {cfg.optimizer._target_} "
            "in this config has no fused key. Fix: leave 'optimizer' out of bench.parts."
        )


def run_benchmark(cfg: DictConfig) -> dict:
    """Runs ``cfg.bench.parts``; prints the results and writes ``<output_dir>/benchmark.json``."""
    check_parts(cfg)
    device = bench_device(cfg)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    results: dict = {"device": name, "settings": OmegaConf.to_container(cfg.bench, resolve=True)}
    for part in cfg.bench.parts:
        if part == "scan":
            results["scan_s"] = scan_seconds(cfg.bench.scan_pairs)
        else:
            value = PARTS[part](cfg)
            results |= {"models": value} if part == "models" else value
    print(summary(results, cfg.bench.scan_pairs))
    write_json_atomic(Path(cfg.output_dir) / "benchmark.json", results)
    return results


def summary(results: dict, scan_pairs: int) -> str:
    """The ratios against their targets, then the per-model table."""
    lines = [f"device: {results['device']}"]
    if "pipeline_over_plain" in results:
        lines.append(
            f"(a) pipeline / plain loop: {results['pipeline_over_plain']:.3f} "
            f"(target >= {TARGETS['pipeline_over_plain']}; "
            f"{results['pipeline_images_per_s']:.1f} vs {results['plain_loop_images_per_s']:.1f} images/s)"
        )
    if "loader_over_consumption" in results:
        lines.append(
            f"(b) data loader / model consumption: {results['loader_over_consumption']:.2f}x "
            f"(target >= {TARGETS['loader_over_consumption']:g}; "
            f"{results['loader_images_per_s']:.1f} vs {results['consumption_images_per_s']:.1f} images/s)"
        )
    if "scan_s" in results:
        lines.append(f"(d) scan of {scan_pairs} pairs: {results['scan_s']:.3f} s (target < {TARGETS['scan_s']:g} s)")
    if "fused_over_unfused" in results:
        lines.append(
            f"(e) training step, fused / unfused optimizer: {results['fused_over_unfused']:.2f}x "
            f"({results['fused_images_per_s']:.1f} vs {results['unfused_images_per_s']:.1f} images/s)"
        )
    if results.get("models"):
        header = ["model", "precision", "channels_last", "compile", "images/s", "peak GB", "GFLOPs/img", "MFU"]
        rows = [
            [
                r["model"],
                r["precision"],
                str(r["channels_last"]),
                str(r["compiled"]),
                f"{r['images_per_s']:.1f}",
                "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.2f}",
                f"{r['train_gflops_per_image']:.2f}",
                "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
            ]
            for r in results["models"]
        ]
        lines.append("(c) forward+backward per architecture:\n" + markdown_table(header, rows))
    return "\n".join(lines)
