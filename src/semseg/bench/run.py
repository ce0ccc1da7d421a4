"""Runs the benchmark's parts (conf/benchmark.yaml), prints ratios and tables, writes
``benchmark.json``."""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf, open_dict

from semseg.bench.architectures import bench_model
from semseg.bench.ddp import ddp_smoke
from semseg.bench.process import process_image_size, process_part, process_summary
from semseg.bench.scan import startup_seconds
from semseg.bench.timing import median
from semseg.bench.training import (
    bench_device,
    consumption_images_per_s,
    loader_images_per_s,
    pipeline_images_per_s,
    plain_loop_images_per_s,
    preloaded_loop_images_per_s,
)
from semseg.data.photolike import PhotoSpec, generate_photolike
from semseg.errors import ConfigError
from semseg.files import write_json_atomic
from semseg.markdown import markdown_table

log = logging.getLogger(__name__)

# The targets, printed beside the measured values.
TARGETS = {"pipeline_over_preloaded": 0.97, "pipeline_over_plain": 0.97, "loader_over_consumption": 2.0, "scan_s": 2.0}


def alternate(measures: dict, cfg: DictConfig) -> dict[str, list[float]]:
    """Runs each of ``measures`` (name -> ``f(cfg, warmup, steps)``, images/s) in turn,
    ``cfg.bench.repeats`` times, so that drifts of the machine hit all alike; each name's values."""
    bench = cfg.bench
    values: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(bench.repeats):
        for name, measure in measures.items():
            values[name].append(measure(cfg, bench.warmup, bench.steps))
    return values


def ratio_of(values: dict[str, list[float]], first: str, second: str, ratio: str) -> dict:
    """The median of the per-repeat ratios ``first / second`` under ``ratio``, each repeat's under
    ``<ratio>_each``."""
    each = [x / y for x, y in zip(values[first], values[second], strict=True)]
    return {ratio: median(each), f"{ratio}_each": each}


def medians(values: dict[str, list[float]]) -> dict[str, float]:
    return {name: median(v) for name, v in values.items()}


def pipeline_part(cfg: DictConfig) -> dict:
    """(a) The pipeline against the loop a user writes over the data set preloaded in memory, and
    against a plain loop over semseg's own data loader."""
    values = alternate(
        {
            "preloaded_loop_images_per_s": preloaded_loop_images_per_s,
            "plain_loop_images_per_s": plain_loop_images_per_s,
            "pipeline_images_per_s": pipeline_images_per_s,
        },
        cfg,
    )
    results = medians(values)
    # What Lightning, the callbacks and the logger add to a step over the same loader and step in a
    # plain loop (what bounds a small model on a GPU); within the machine's noise, it may be negative.
    per_image_s = 1 / results["pipeline_images_per_s"] - 1 / results["plain_loop_images_per_s"]
    return (
        results
        | {"host_overhead_ms_per_step": 1000 * cfg.data.batch_size * per_image_s}
        | ratio_of(values, "pipeline_images_per_s", "preloaded_loop_images_per_s", "pipeline_over_preloaded")
        | ratio_of(values, "pipeline_images_per_s", "plain_loop_images_per_s", "pipeline_over_plain")
    )


def loader_part(cfg: DictConfig) -> dict:
    """(b) The data loader alone against the model's consumption (data already on the device)."""
    workers: set[int] = set()

    def loader(cfg: DictConfig, warmup: int, steps: int) -> float:
        speed, count = loader_images_per_s(cfg, warmup, steps)
        workers.add(count)
        return speed

    values = alternate({"loader_images_per_s": loader, "consumption_images_per_s": consumption_images_per_s}, cfg)
    ratio = ratio_of(values, "loader_images_per_s", "consumption_images_per_s", "loader_over_consumption")
    return medians(values) | ratio | {"num_workers": workers.pop()}


def models_part(cfg: DictConfig) -> list[dict]:
    """(c) Each architecture's forward+backward images/s, peak memory and MFU: every model without
    torch.compile first, then compiled (minutes each), until ``bench.models_budget_s`` is spent."""
    bench, rows = cfg.bench, []
    deadline = time.monotonic() + bench.models_budget_s if bench.get("models_budget_s") else math.inf
    for compiled, name in itertools.product(bench.compile, bench.models):
        model, *overrides = str(name).split()
        model_cfg = compose(config_name="train", overrides=[f"model={model}", *overrides]).model
        log.info(f"benchmarking {name} ({OmegaConf.to_container(model_cfg)}, compile={compiled})")
        results = bench_model(
            name,
            model_cfg,
            num_classes=cfg.data.num_classes,
            in_channels=cfg.data.in_channels,
            size=bench.size,
            batch_size=bench.batch_size,
            precisions=list(bench.precisions),
            channels_last=list(bench.channels_last),
            compile_modes=[compiled],
            warmup=bench.warmup,
            steps=bench.steps,
            device=bench_device(cfg),
            deadline=deadline,
        )
        rows += [r.row() for r in results]
    planned = len(bench.models) * len(bench.precisions) * len(bench.channels_last) * len(bench.compile)
    if len(rows) < planned:
        log.warning(
            f"bench.models_budget_s={bench.models_budget_s}: {planned - len(rows)} of {planned} "
            "model measurements left out (the last of the compiled ones)"
        )
    return rows


def optimizer_part(cfg: DictConfig) -> dict:
    """(e) Training steps (one batch already on the device) with the configured optimizer against
    the same optimizer with ``fused: false``: what the fused default gains."""
    unfused = cfg.copy()
    with open_dict(unfused):
        unfused.optimizer.fused = False

    def unfused_steps(_cfg: DictConfig, warmup: int, steps: int) -> float:
        return consumption_images_per_s(unfused, warmup, steps)

    values = alternate({"unfused_images_per_s": unfused_steps, "fused_images_per_s": consumption_images_per_s}, cfg)
    return medians(values) | ratio_of(values, "fused_images_per_s", "unfused_images_per_s", "fused_over_unfused")


PARTS = {
    "pipeline": pipeline_part,
    "loader": loader_part,
    "models": models_part,
    "optimizer": optimizer_part,
    "ddp": ddp_smoke,
    "process": process_part,
}


def check_parts(cfg: DictConfig) -> None:
    """Raises ``ConfigError`` for a part that cannot run, before any part has spent minutes."""
    for part in cfg.bench.parts:
        if part != "scan" and part not in PARTS:
            raise ConfigError(f"bench.parts: unknown part {part!r}; choose from {[*PARTS, 'scan']}.")
    if "process" in cfg.bench.parts:
        process_image_size(cfg)  # the loop resizes every image: refused without data.image_size
    if "optimizer" in cfg.bench.parts and "fused" not in cfg.optimizer:
        raise ConfigError(
            f"bench.parts: 'optimizer' compares optimizer.fused true and false, and {cfg.optimizer._target_} "
            "in this config has no fused key. Fix: leave 'optimizer' out of bench.parts."
        )


def run_benchmark(cfg: DictConfig) -> dict:
    """Runs ``cfg.bench.parts``; prints the results and writes ``<output_dir>/benchmark.json``."""
    check_parts(cfg)
    if cfg.bench.get("photolike"):
        generate_photolike(Path(cfg.data.root), PhotoSpec(**cfg.bench.photolike))
    device = bench_device(cfg)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    results: dict = {"device": name, "settings": OmegaConf.to_container(cfg.bench, resolve=True)}
    for part in cfg.bench.parts:
        if part == "scan":
            results |= startup_seconds(cfg.bench.scan_pairs)
        else:
            value = PARTS[part](cfg)
            results |= {"models": value} if part == "models" else value
    print(summary(results, cfg.bench.scan_pairs))
    write_json_atomic(Path(cfg.output_dir) / "benchmark.json", results)
    return results


def summary(results: dict, scan_pairs: int) -> str:
    """The ratios against their targets, then the per-model table."""
    lines = [f"device: {results['device']}"]
    if "pipeline_over_preloaded" in results:
        for ratio, other, what in (
            ("pipeline_over_preloaded", "preloaded_loop_images_per_s", "loop over the set preloaded in memory"),
            ("pipeline_over_plain", "plain_loop_images_per_s", "plain loop over semseg's data loader"),
        ):
            lines.append(
                f"(a) pipeline / {what}: {results[ratio]:.3f} (target >= {TARGETS[ratio]}; "
                f"{results['pipeline_images_per_s']:.2f} vs {results[other]:.2f} images/s; "
                f"repeats {', '.join(f'{r:.3f}' for r in results[f'{ratio}_each'])})"
            )
        lines.append(f"(a) host overhead per training step (pipeline over the plain loop): "
                     f"{results['host_overhead_ms_per_step']:.1f} ms")  # fmt: skip
    if "loader_over_consumption" in results:
        lines.append(
            f"(b) data loader / model consumption: {results['loader_over_consumption']:.2f}x "
            f"(target >= {TARGETS['loader_over_consumption']:g}; "
            f"{results['loader_images_per_s']:.1f} vs {results['consumption_images_per_s']:.1f} images/s)"
        )
    if "scan_s" in results:
        lines.append(
            f"(d) {scan_pairs} pairs: scan {results['scan_s']:.2f} s (target < {TARGETS['scan_s']:g} s); data check "
            f"{results['check_cold_s']:.1f} s without its caches, {results['check_warm_s']:.1f} s with them"
        )
    if "fused_over_unfused" in results:
        lines.append(
            f"(e) training step, fused / unfused optimizer: {results['fused_over_unfused']:.2f}x "
            f"({results['fused_images_per_s']:.1f} vs {results['unfused_images_per_s']:.1f} images/s)"
        )
    if "ddp" in results:
        ddp = results["ddp"]
        outcome = f"ok, val/miou {ddp['val/miou']}" if ddp["ok"] else f"FAILED: {ddp['error']}"
        lines.append(f"(f) one-device DDP training ({ddp['backend']}): {outcome} ({ddp['seconds']} s)")
    lines += process_summary(results)
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
