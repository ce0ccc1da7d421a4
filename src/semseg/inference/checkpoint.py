"""Reading checkpoints for inference: only tensors and plain data, never code from the file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from semseg.errors import ConfigError
from semseg.run_folder import UnusableCheckpoint, open_checkpoint
from semseg.task.module import SegmentationModule


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents, loaded with ``weights_only=True`` (memory-mapped: a tensor's data is
    read when the module takes it).

    A weights-only load unpickles tensors, numbers, strings and containers only, so a checkpoint
    from elsewhere cannot run code when it is opened.

    Raises:
        ConfigError: no such file, damaged or truncated, objects other than weights, or a checkpoint
            without the hyper-parameters semseg saves; in one line naming the file.
    """
    try:
        return open_checkpoint(path, ("state_dict", "hyper_parameters"))
    except UnusableCheckpoint as error:
        raise ConfigError(
            f"ckpt_path={path}: {error}. Use a checkpoint written by scripts/train.py: a training run keeps them "
            "in <run folder>/checkpoints/ (best.ckpt, last.ckpt)."
        ) from error


def load_module(path: str | Path, inference: Mapping | None = None) -> SegmentationModule:
    """The trained module of a checkpoint, on the CPU, in eval mode.

    Everything inference needs comes from the checkpoint's hyper-parameters (classes, palette,
    normalisation, channels, ignore index, model and data config).

    Args:
        path: the checkpoint.
        inference: an ``inference`` config group replacing the checkpoint's (how its val and
            test stages see images: eval.py's ``inference=tiled``, say); None keeps training's.
    """
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint["hyper_parameters"])
    if inference is not None:  # in the hyper-parameters, so that the module and its record agree
        hparams["inference"] = dict(inference)
    # The trained weights replace the encoder's initial ones, so building the network must not
    # fetch pretrained weights (no network here) or read a weights file that may have moved. (A
    # mask-classification model's hf_config holds its whole architecture: model.pretrained is not read.)
    hparams["model"] = {**hparams["model"], "encoder_weights": None}
    if hparams["model"].get("pretrained"):
        hparams["model"]["pretrained"] = None
    module = SegmentationModule(**hparams)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ConfigError(f"ckpt_path={path}: its weights do not fit the model it describes: {error}") from error
    return module.eval()
