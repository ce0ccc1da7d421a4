"""(g) Whole processes, as users run them: ``scripts/train.py`` against ``scripts/baseline_loop.py``
(the loop a user writes) on the same folder, recipe, epochs and device, validation off, each run
in turn ``bench.process.repeats`` times.

The in-process parts (a) time steps inside one Python process; this part times what a user waits
for: imports, the data check, decoding, training, checkpoints and exit, as ``/usr/bin/time``
would. The recipe is the loop's: U-Net ResNet-18 from random weights, cross-entropy, AdamW with a
poly schedule, horizontal flips, ``data.batch_size`` and ``data.image_size`` of the config.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import DictConfig

from semseg.bench.timing import median
from semseg.errors import ConfigError
from semseg.run_folder import RunFolder
from semseg.trainer_defaults import uses_cuda

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"
LOOP = "loop"
TARGET = 1.1  # the whole-process ratio semseg is held to


def loop_command(cfg: DictConfig) -> list[str]:
    """``scripts/baseline_loop.py`` for the config's data, batch, learning rate and device."""
    data, settings = cfg.data, cfg.bench.process
    height, width = process_image_size(cfg)
    command = [sys.executable, str(SCRIPTS / "baseline_loop.py"), "--root", str(data.root)]
    command += ["--num-classes", str(data.num_classes), "--size", str(height), str(width)]
    command += ["--epochs", str(settings.epochs), "--batch-size", str(data.batch_size), "--lr", str(cfg.optimizer.lr)]
    command += ["--no-eval", "--device", "cuda" if uses_cuda(cfg.trainer) else "cpu"]
    if data.get("ignore_index") is not None:
        command += ["--ignore-index", str(data.ignore_index)]
    if str(cfg.trainer.precision).startswith("bf16"):
        command.append("--bf16")
    return command


def train_command(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> list[str]:
    """``scripts/train.py`` on the loop's recipe, validation off, into ``run_dir``, then
    ``bench.process.overrides`` and a variant's ``overrides``."""
    data, settings = cfg.data, cfg.bench.process
    height, width = process_image_size(cfg)
    recipe = [
        "data=folder", f"data.root={data.root}", f"data.num_classes={data.num_classes}",
        f"data.image_size=[{height},{width}]", f"data.batch_size={data.batch_size}",
        "model=unet", "model.encoder_name=resnet18", "model.encoder_weights=null",
        "loss=ce", "optimizer=adamw", f"optimizer.lr={cfg.optimizer.lr}", "augment=hflip",
        f"trainer.accelerator={'gpu' if uses_cuda(cfg.trainer) else 'cpu'}",
        f"trainer.precision={cfg.trainer.precision}",
        f"trainer.max_epochs={settings.epochs}", "trainer.limit_val_batches=0", "logger=none",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    if data.get("ignore_index") is not None:
        recipe.append(f"data.ignore_index={data.ignore_index}")
    return [sys.executable, str(SCRIPTS / "train.py"), *recipe, *settings.overrides, *overrides]


def process_image_size(cfg: DictConfig) -> tuple[int, int]:
    if not cfg.data.get("image_size"):
        raise ConfigError(
            "bench.parts: 'process' compares with the loop, which resizes every image: set data.image_size=[H,W]."
        )
    height, width = cfg.data.image_size
    return int(height), int(width)


def _run(command: list[str], what: str) -> tuple[dict, str]:
    """The wall clock and peak resident memory of ``command`` (``wall_s``, ``peak_rss_gb``) and its
    standard output; its error output on failure."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        # os.wait4, not Popen.wait: it also returns this child's own resource usage (peak RSS in KiB).
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if process.returncode != 0:
            raise RuntimeError(
                f"bench part 'process': the {what} run failed ({process.returncode}):\n{stderr.read()[-3000:]}"
            )
        return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss / 2**20}, stdout.read()


def time_loop(cfg: DictConfig) -> dict:
    """One run of the loop: its wall clock and training images/s."""
    costs, stdout = _run(loop_command(cfg), LOOP)
    result = json.loads(stdout.strip().splitlines()[-1])
    return costs | {"train_images_per_s": result["train_images"] / result["train_s"]}


def time_train(cfg: DictConfig, overrides: list[str], name: str) -> dict:
    """One run of train.py (a scratch run folder): its wall clock and training images/s."""
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        costs, _ = _run(train_command(cfg, run_dir, overrides), name)
        run_info = json.loads(RunFolder(run_dir).run_info.read_text())
    return costs | {"train_images_per_s": run_info["train_images_per_s"]}


def process_part(cfg: DictConfig) -> dict:
    """Each variant of ``bench.process.variants`` (name -> train.py overrides) and the loop, in
    turn, ``repeats`` times; the median wall clocks and the medians of the per-repeat ratios of
    the loop's wall clock to each variant's (above 1: train.py finishes first) and of their
    training images/s."""
    settings = cfg.bench.process
    runs: dict[str, list[dict]] = {LOOP: [], **{name: [] for name in settings.variants}}
    for repeat in range(settings.repeats):
        runs[LOOP].append(time_loop(cfg))
        for name, overrides in settings.variants.items():
            runs[name].append(time_train(cfg, list(overrides), name))
        walls = ", ".join(f"{name} {values[-1]['wall_s']:.1f} s" for name, values in runs.items())
        log.info(f"whole processes, repeat {repeat + 1} of {settings.repeats}: {walls}")
    results: dict = {"process_epochs": settings.epochs, "process_runs": runs}
    for name in settings.variants:
        pairs = list(zip(runs[name], runs[LOOP], strict=True))
        wall_ratios = [loop["wall_s"] / run["wall_s"] for run, loop in pairs]
        rate_ratios = [run["train_images_per_s"] / loop["train_images_per_s"] for run, loop in pairs]
        results[f"process_{name}_over_loop"] = {
            "whole_process": median(wall_ratios),
            "whole_process_each": wall_ratios,
            "training_rate": median(rate_ratios),
            "wall_s": median([run["wall_s"] for run in runs[name]]),
            "loop_wall_s": median([loop["wall_s"] for loop in runs[LOOP]]),
            "peak_rss_gb": median([run["peak_rss_gb"] for run in runs[name]]),
            "loop_peak_rss_gb": median([loop["peak_rss_gb"] for loop in runs[LOOP]]),
        }
    return results


def process_summary(results: dict) -> list[str]:
    """A line per variant: the whole-process ratio against its target, the training-rate ratio."""
    lines = []
    for key, value in results.items():
        if key.startswith("process_") and key.endswith("_over_loop"):
            name = key.removeprefix("process_").removesuffix("_over_loop")
            epochs, each = results["process_epochs"], ", ".join(f"{r:.3f}" for r in value["whole_process_each"])
            lines.append(
                f"(g) whole process (epochs: {epochs}, validation off), train.py ({name}) / the loop: "
                f"{value['whole_process']:.3f} (target >= {TARGET}; {value['wall_s']:.1f} s vs "
                f"{value['loop_wall_s']:.1f} s; repeats {each}); training images/s {value['training_rate']:.3f}; "
                f"peak memory {value['peak_rss_gb']:.2f} vs {value['loop_peak_rss_gb']:.2f} GB"
            )
    return lines
