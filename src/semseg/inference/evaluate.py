"""evaluate(cfg): a checkpoint's contract metrics on one split, and a per-class table."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from semseg.builders import build_datamodule
from semseg.errors import ConfigError
from semseg.files import atomic_path, json_safe, write_json_atomic
from semseg.inference.checkpoint import load_module
from semseg.markdown import markdown_table
from semseg.run_folder import METRICS_FILE, RunFolder
from semseg.task.metrics import per_class_scores
from semseg.task.module import SegmentationModule
from semseg.task.per_image import write_per_image_scores
from semseg.trainer_defaults import trainer_kwargs

log = logging.getLogger(__name__)

SCORING_STAGE = "test"  # the module's stage that evaluate() runs, whatever the split
PER_CLASS_COLUMNS = ("class", "iou", "dice", "precision", "recall", "target_pixels", "predicted_pixels")


def data_config(cfg: DictConfig, module: SegmentationModule, overrides: Sequence[str]) -> dict:
    """The data to evaluate on: the checkpoint's training data config, with the ``data.<key>=``
    overrides given on the command line; ``data=<name>`` replaces it with that config.

    Args:
        cfg: the composed ``conf/eval.yaml``.
        module: the checkpoint's module (its ``data`` hyper-parameter).
        overrides: the command line's overrides (``HydraConfig.get().overrides.task``).
    """
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    trained_on = module.hparams.get("data")
    if "data" in keys or trained_on is None:
        return OmegaConf.to_container(cfg.data, resolve=True)
    data = OmegaConf.create(dict(trained_on))
    for key in keys:
        if key.startswith("data."):
            # The composed config holds the override's parsed value (Hydra's override grammar).
            OmegaConf.update(data, key.removeprefix("data."), OmegaConf.select(cfg, key), force_add=True)
    return OmegaConf.to_container(data, resolve=True)


def _check_fits(data: Mapping, module: SegmentationModule) -> None:
    hp = module.hparams
    if (data.get("mode") or "multiclass") != module.mode:
        raise ConfigError(
            f"the checkpoint was trained with data.mode={module.mode}, but data.mode={data.get('mode')}: "
            "evaluate it in its own mode (drop the data.mode override)."
        )
    if data["num_classes"] != hp.num_classes or data.get("in_channels", 3) != hp.in_channels:
        raise ConfigError(
            f"the checkpoint was trained on {hp.num_classes} classes ({', '.join(hp.class_names)}) of "
            f"{hp.in_channels}-channel images, but data.num_classes={data['num_classes']} and "
            f"data.in_channels={data.get('in_channels', 3)}: evaluate on data with the same classes "
            "(the data overrides used in training, or none to use the checkpoint's own data config)."
        )


def per_class_rows(confusion: torch.Tensor, class_names: Sequence[str]) -> list[dict]:
    """IoU, Dice, precision, recall and pixel counts per class from a (C, C) confusion matrix
    (rows target, columns prediction); NaN where a score has no pixel to stand on."""
    columns = {name: scores.tolist() for name, scores in per_class_scores(confusion).items()}
    target, predicted = confusion.sum(1), confusion.sum(0)
    return [
        {
            "class": name,
            **{k: v[i] for k, v in columns.items()},
            "target_pixels": int(target[i]),
            "predicted_pixels": int(predicted[i]),
        }
        for i, name in enumerate(class_names)
    ]


def presence_rows(confusion: torch.Tensor, class_names: Sequence[str]) -> list[dict]:
    """``per_class_rows`` of a binary or multilabel task, from its (K, 2, 2) presence confusion:
    each class's row is that of its 'present' side."""
    return [per_class_rows(planes, ["absent", name])[1] for planes, name in zip(confusion, class_names, strict=True)]


def _write_confusion(confusion: torch.Tensor, class_names: Sequence[str], mode: str, folder: Path) -> None:
    """confusion_matrix.csv: multiclass, rows target and columns prediction; binary and multilabel,
    one row per class of its pixel counts (tn, fp, fn, tp of its presence)."""
    with atomic_path(folder / "confusion_matrix.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        if mode == "multiclass":
            writer.writerow(["target \\ prediction", *class_names])
            writer.writerows([name, *row] for name, row in zip(class_names, confusion.long().tolist(), strict=True))
        else:
            writer.writerow(["class", "tn", "fp", "fn", "tp"])
            counts = confusion.long().flatten(1).tolist()
            writer.writerows([name, *row] for name, row in zip(class_names, counts, strict=True))


def _write_per_class(rows: list[dict], folder: Path) -> str:
    with atomic_path(folder / "per_class.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PER_CLASS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    markdown = markdown_table(PER_CLASS_COLUMNS, cells)
    with atomic_path(folder / "per_class.md") as tmp:
        tmp.write_text(markdown)
    return markdown


def evaluate(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, float]:
    """Scores ``cfg.ckpt_path`` on ``cfg.split`` with the ``inference`` settings.

    Writes ``metrics.json`` (contract names under ``<split>/``), ``per_class.csv``/``.md``,
    ``confusion_matrix.csv`` (rows target, columns prediction; binary and multilabel: each class's
    tn, fp, fn, tp) and ``per_image_scores.npz`` (each image's, under ``<split>/``:
    ``semseg.task.per_image``) into ``cfg.output_dir``.

    Args:
        cfg: the composed ``conf/eval.yaml``.
        overrides: the command line's overrides, to tell which data keys were given.
    """
    split = cfg.split
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split={split}: evaluate one of train, val, test.")
    inference = cfg.get("inference")
    module = load_module(cfg.ckpt_path, OmegaConf.to_container(inference, resolve=True) if inference else None)
    data = data_config(cfg, module, overrides)
    _check_fits(data, module)
    data["synthetic"] = None  # evaluate what is there; generating data is training's business
    log.info(f"evaluating {cfg.ckpt_path} on the {split} split of {data['root']} ({module.inference})")
    loader = build_datamodule(data).evaluation_dataloader(split)

    trainer = L.Trainer(
        **trainer_kwargs(cfg.trainer, data), logger=False, enable_checkpointing=False, default_root_dir=cfg.output_dir
    )
    # The module's test stage scores any split (trainer.test): its metrics, named test/*, are
    # renamed to the split's, and its confusion matrix is the test stage's.
    module.record_per_image()
    raw = trainer.test(module, dataloaders=loader, verbose=False)[0]
    metrics = {f"{split}/{k.removeprefix(f'{SCORING_STAGE}/')}": float(v) for k, v in raw.items()}

    output_dir = Path(cfg.output_dir)
    class_names = list(module.hparams.class_names)
    confusion = module.last_confusion[SCORING_STAGE]
    rows = per_class_rows if module.mode == "multiclass" else presence_rows
    markdown = _write_per_class(rows(confusion, class_names), output_dir)
    _write_confusion(confusion, class_names, module.mode, output_dir)
    records = {split: module.per_image_results[SCORING_STAGE]}
    hp = module.hparams
    write_per_image_scores(RunFolder(output_dir).per_image_scores, records, class_names, hp.ignore_index, module.mode)
    write_json_atomic(output_dir / METRICS_FILE, json_safe(metrics))
    summary = ", ".join(
        f"{k} {metrics[f'{split}/{k}']:.4f}" for k in ("miou", "dice", "pixel_acc") if f"{split}/{k}" in metrics
    )
    print(f"{split}: {summary}\n\n{markdown}\n\nwritten to {output_dir}")
    return metrics
