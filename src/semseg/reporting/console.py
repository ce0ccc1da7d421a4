"""What a training run tells its user: the closing summary, and the upstream noise it leaves out.

Nothing here imports torch or Lightning at import time: the entry points import this module before
Hydra reads the command line (``--help`` must stay quick), and the summary is plain text from the
run's results.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from semseg.run_folder import RunFolder

if TYPE_CHECKING:
    from semseg.data.layout import DataLayout

# Lightning's rank-zero messages (GPU, tips) go through one of these loggers: the last of the two
# modules imported sets it for both.
LIGHTNING_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# Info lines of Lightning that tell a user of this repository nothing: an advertisement printed by
# every Trainer that has no LitLogger (no setting turns it off), and a remark on how Lightning
# counts the scheduler's steps.
_LIGHTNING_CHATTER = ("💡 Tip: For seamless cloud logging", "Loading `train_dataloader` to estimate number of stepping")
# Warnings about code we do not own and that need no action from the user: Lightning 2.6's own
# pytree helper uses torch's deprecated LeafSpec; and the module's on_after_batch_transfer (the
# batches' normalisation on the device) is meant to be used with the data module, which has none;
# weight averaging (+callbacks=ema) warns of sharded layers whenever a module has configure_model,
# and the module's only compiles (no sharding), so there is no memory to run out of.
_UPSTREAM_WARNINGS = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    (UserWarning, r"You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a"),
    (UserWarning, r"You're using the WeightAveraging callback with a model that overrides the configure_model"),
)

# The headline scores of the summary: metric name (as the module logs it) and its title.
HEADLINE = (("miou", "mIoU"), ("dice", "mean Dice"), ("pixel_acc", "pixel acc."))
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_upstream_noise(lightning: bool = True) -> None:
    """Leaves Lightning's and torch's messages that need no action out of the console (see above);
    ``lightning=False`` leaves Lightning's own console handler alone (for a process that never
    imports it: importing it here would cost seconds).

    Idempotent; process-wide, hence called by the entry points (``semseg.cli``), not the library.
    """
    for category, message in _UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        rank_zero = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in rank_zero.filters):
            rank_zero.addFilter(_DropMessages(_LIGHTNING_CHATTER))
    if lightning:
        _lightning_logs_once()


def _lightning_logs_once() -> None:
    """Where the entry point's logging is set up (Hydra: the console and the run's train.log),
    Lightning's messages go there, once. Its package adds a console handler of its own on import
    ("INFO: ..." on stderr), which would print each of them a second time."""
    if not logging.getLogger().handlers:
        return  # no logging set up: Lightning's own handlers are the only ones that print
    import lightning  # noqa: F401  (imported here, not above: --help must not wait for it)

    package = logging.getLogger("lightning")
    for handler in [h for h in package.handlers if type(h) is logging.StreamHandler]:
        package.removeHandler(handler)


def shown(path: str | Path) -> str:
    """``path`` as the user should type it: relative to the working directory when inside it."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def duration(seconds: float) -> str:
    """``12.3 s``, ``5 min 12 s``, ``2 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min {int(seconds % 60)} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _scores_table(metrics: Mapping) -> list[str]:
    """The headline scores of each evaluated split, one row per split."""
    stages = [stage for stage in ("val", "test") if any(f"{stage}/{key}" in metrics for key, _ in HEADLINE)]
    if not stages:
        return []
    rows = [" " * 8 + "".join(f"{title:>12}" for _, title in HEADLINE)]
    for stage in stages:
        values = (metrics.get(f"{stage}/{key}") for key, _ in HEADLINE)
        rows.append(f"  {stage:<6}" + "".join(f"{v:>12.3f}" if isinstance(v, float) else f"{'-':>12}" for v in values))
    return rows


def _next_commands(
    checkpoint: Path, run: Path, data: DataLayout, report_folder: Path, wandb_sync: str | None
) -> list[str]:
    """The commands that take the run further, with its paths filled in."""

    def script(name: str) -> str:
        return f"python {shown(SCRIPTS / name) if SCRIPTS.is_dir() else f'scripts/{name}'}"

    ckpt = f"ckpt_path={shown(checkpoint)}"
    # eval.py scores the test split by default; without one, the validation split.
    split = "test" if data.has_labels("test") else "val"
    # With list files (data.split_files) every split's images share one folder.
    images = shown(data.root / (f"images/{split}" if data.split_files is None else data.image_folder))
    commands = [
        f"{script('eval.py')} {ckpt}" + ("" if split == "test" else " split=val"),
        f"{script('predict.py')} {ckpt} input={images} output={shown(run / 'predictions')}",
        f"{script('export.py')} {ckpt} format=onnx",
        f"{script('report.py')} {shown(report_folder)}",
    ]
    if wandb_sync:
        commands.append(f"{wandb_sync}   # uploads the offline W&B run")
    return commands


def training_summary(
    run: Path,
    metrics: Mapping[str, float | str],
    run_info: Mapping,
    data: str | Path | DataLayout,
    report_folder: Path | None = None,
    wandb_sync: str | None = None,
) -> str:
    """The block a run ends with (console and train.log): how long, which epoch won, its scores,
    where everything is, and what to run next.

    Args:
        run: the run folder.
        metrics: the run's metrics.json (the best checkpoint's val/* and test/*, or ``validation: off``).
        run_info: the run's run_info.json (``epochs``, ``train_time_s``, ``checkpoint``, ``best_epoch``).
        data: the training data set (its folder, or its layout with list files): predict.py's example input.
        report_folder: the folder for report.py (a multirun's sweep folder); the run by default.
        wandb_sync: the command that uploads an offline W&B run.
    """
    folder = RunFolder(run)
    checkpoint = run / run_info["checkpoint"] if "checkpoint" in run_info else folder.last_checkpoint
    epochs = run_info.get("epochs")
    head = f"training finished: {epochs} epoch{'s' if epochs != 1 else ''} in {duration(run_info['train_time_s'])}"
    if metrics.get("validation") == "off":
        head += f"; validation was off, so the last checkpoint ({checkpoint.name}) is the result"
    elif run_info.get("best_epoch"):
        head += f"; best epoch {run_info['best_epoch']} (val/miou {metrics.get('val/miou', float('nan')):.3f})"
    lines = [head, *_scores_table(metrics)]
    files = [path.name for path in (folder.metrics, folder.run_info, folder.train_log) if path.is_file()]
    lines.append(f"run folder:   {shown(run)}" + (f"  ({', '.join(files)})" if files else ""))
    lines.append(f"checkpoint:   {shown(checkpoint)}")
    if folder.pictures.is_dir():
        lines.append(f"pictures:     {shown(folder.pictures)}")
    lines.append("next:")
    # Imported here: semseg.data loads Lightning, which `train.py --help` must not wait for.
    from semseg.data.layout import DataLayout

    layout = data if isinstance(data, DataLayout) else DataLayout(Path(data))
    commands = _next_commands(checkpoint, run, layout, report_folder or run, wandb_sync)
    lines += [f"  {command}" for command in commands]
    return "\n".join(lines)
