"""The objects a config describes, built the same way for every entry point: the LightningModule,
the data module, and training's run (the data inspected first). Training, evaluation, the
leaderboard's pictures and the benchmark all build through here."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from semseg.data import SegmentationDataModule
from semseg.data.band_stats import input_normalization
from semseg.data.class_weights import resolve_class_weights
from semseg.data.colour_labels import colour_palette, palette_file
from semseg.data.inspection import DataReport, inspect_before_training
from semseg.data.mask_encoding import resolve_class_names
from semseg.data.rare_class import RareClassSettings, describe_draws, sampler_settings
from semseg.models import ARCHITECTURES
from semseg.models.mask_classification import MASK_ARCHITECTURES, resolved_model_config
from semseg.models.pretrained import replaced_keys, resolve_from_pretrained, start_from
from semseg.run_folder import RunFolder
from semseg.task.module import SegmentationModule

log = logging.getLogger(__name__)

# Keys of the data group that are not SegmentationDataModule arguments.
_DATA_KEYS_FOR_MODULE = ("mean", "std", "palette", "threshold")


def build_module(
    cfg: DictConfig,
    class_weights: list[float] | None = None,
    resume_from: str | None = None,
    normalization: dict | None = None,
) -> SegmentationModule:
    """The LightningModule described by ``cfg`` (model, loss, optimizer, scheduler, data classes).

    ``class_weights`` are the resolved ``loss.class_weights`` (see ``resolve_class_weights``);
    they are saved with the module's hyper-parameters, so the checkpoint and the logger hold them.
    ``resume_from`` is the checkpoint training resumes from (``resume_checkpoint``), if any: its
    weights then replace ``model.init_from``'s, which are not loaded. ``normalization``: the
    inputs' (``semseg.data.band_stats.input_normalization``, from the data); None takes
    ``data.mean/std`` for 8-bit images, or the encoder's.
    """
    data = cfg.data
    if normalization is None and data.get("mean") is not None and data.get("std") is not None:
        normalization = {"mean": list(data.mean), "std": list(data.std)}
    container = OmegaConf.to_container(cfg, resolve=True)
    # The checkpoint keeps the data config with an absolute root, so eval.py finds the data from
    # any working directory.
    container["data"]["root"] = str(Path(data.root).resolve())
    label_map = container["data"].get("label_map")
    if isinstance(label_map, str):  # a palette file, likewise
        container["data"]["label_map"] = str(palette_file(label_map, data.root).resolve())
    module = SegmentationModule(
        model=_model_config(container["model"], data.in_channels, data.num_classes),
        loss=container["loss"],
        optimizer=container["optimizer"],
        param_groups=container.get("param_groups"),
        scheduler=container["scheduler"],
        num_classes=data.num_classes,
        class_names=resolve_class_names(
            data.num_classes, data.get("class_names"), label_map, data.get("ignore_index"), data.root
        ),
        ignore_index=SegmentationDataModule.effective_ignore_index(data.get("ignore_index")),
        in_channels=data.in_channels,
        class_weights=class_weights,
        normalization=normalization,
        boundary_width=cfg.metrics.boundary_width,
        palette=colour_palette(container["data"]),  # a colour label_map's colours by default
        inference=container.get("inference"),
        data=container["data"],
        mode=data.get("mode") or "multiclass",
        threshold=0.5 if data.get("threshold") is None else data.threshold,
    )
    _start_from_earlier_weights(module, resumes=_resumes(resume_from, cfg))
    return module


def _model_config(model: dict, in_channels: int, num_classes: int) -> dict:
    """The ``model`` config, with the architecture of ``model.from_pretrained`` when it names one, or
    of a mask-classification model in full (``model.pretrained``'s, with ``model.hf_config``):
    saved so as the module's hyper-parameters, its checkpoints describe the network."""
    if model["arch"].lower() in MASK_ARCHITECTURES:
        return resolved_model_config(model, in_channels, num_classes)
    if not model.get("from_pretrained"):
        return model
    resolved = resolve_from_pretrained(model, ARCHITECTURES)
    if rank_zero_only.rank == 0:
        replaced = replaced_keys(model, resolved)
        log.info(
            f"model.from_pretrained={model['from_pretrained']}: the network is its {resolved['arch']} on "
            f"{resolved['encoder_name']}" + (f"; ignored: {', '.join(replaced)}" if replaced else "")
        )
    return resolved


def _start_from_earlier_weights(module: SegmentationModule, resumes: bool) -> None:
    """Loads ``model.init_from``'s or ``model.from_pretrained``'s weights, unless training resumes:
    the checkpoint's weights then replace every tensor, and the files need not exist any more."""
    model = module.hparams.model
    key = "init_from" if model.get("init_from") else "from_pretrained" if model.get("from_pretrained") else None
    if key is None:
        return
    if resumes:
        if rank_zero_only.rank == 0:
            log.info(f"model.{key} is not loaded: training resumes from a checkpoint, with its weights")
        return
    line, _ = start_from(module.net, model, module.hparams.in_channels)
    if rank_zero_only.rank == 0:
        log.info(line)


def _resumes(resume_from: str | None, cfg: DictConfig) -> bool:
    """Whether training continues from ``resume_from``: Lightning's ``ckpt_path=last`` without a
    last.ckpt (passed on as given by ``resume_checkpoint``) warns and starts over."""
    if resume_from is None:
        return False
    return not (resume_from == "last" and not RunFolder(cfg.output_dir).last_checkpoint.is_file())


def build_datamodule(
    data: DictConfig | Mapping, seed: int | None = None, report: DataReport | None = None
) -> SegmentationDataModule:
    """The data module for a ``data`` config (``module`` normalises its batches on the device);
    ``report``: the start-up inspection's, whose per-image class pixels ``data.sampler=rare_class``
    draws by."""
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
    kwargs = {k: v for k, v in data.items() if k not in _DATA_KEYS_FOR_MODULE}
    pixels = report.splits["train"].image_class_pixels if report is not None else None
    return SegmentationDataModule(**kwargs, seed=seed, train_class_pixels=pixels)


def build_run(
    cfg: DictConfig, seed: int, resume_from: str | None = None
) -> tuple[DataReport, SegmentationModule, SegmentationDataModule]:
    """The data set's report, the module and the data module of a training config (``resume_from``:
    the checkpoint training resumes from, see ``build_module``).

    The data set is checked first, before any work: a bad file stops here, with its name and fix.
    """
    rank_zero = rank_zero_only.rank == 0  # under DDP every rank checks, rank 0 says what it found
    # Before the inspection, which may read every mask: a mistyped sampler fails at once.
    sampling = sampler_settings(cfg.data.get("sampler"), _container(cfg.data.get("rare_class")))
    report = inspect_before_training(OmegaConf.to_container(cfg.data, resolve=True), say=rank_zero)
    if sampling is not None:
        _describe_draws(report, sampling, say=rank_zero)
    class_weights = resolve_class_weights(cfg.loss.get("class_weights"), report.class_names, report.train_counts)
    if rank_zero:
        _log_class_weights(cfg.loss.get("class_weights"), report.class_names, class_weights)
    normalization = input_normalization(OmegaConf.to_container(cfg.data, resolve=True), report.image_dtype)
    module = build_module(cfg, class_weights, resume_from, normalization)
    return report, module, build_datamodule(cfg.data, seed, report)


def _container(node: object) -> object:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _describe_draws(report: DataReport, sampling: RareClassSettings, say: bool) -> None:
    """Puts ``data.sampler=rare_class``'s draws in the report (data_report.json) and, with ``say``,
    the class draw probabilities in the log."""
    pixels = np.stack(list(report.splits["train"].image_class_pixels.values()))
    report.rare_class_sampling = describe_draws(sampling, report.class_names, pixels)
    if say:
        named = ", ".join(f"{name} {p:.4g}" for name, p in report.rare_class_sampling["class_probabilities"].items())
        log.info(f"data.sampler=rare_class (temperature {sampling.temperature:g}): class draw probabilities {named}")


def _log_class_weights(spec: object, class_names: list[str], weights: list[float] | None) -> None:
    if weights is not None:
        named = ", ".join(f"{name} {w:g}" for name, w in zip(class_names, weights, strict=True))
        source = f" ({spec} from the training masks)" if isinstance(spec, str) else ""
        log.info(f"loss.class_weights{source}: {named}")
