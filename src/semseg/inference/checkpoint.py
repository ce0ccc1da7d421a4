"""Reading checkpoints for inference: only tensors and plain data, never code from the file."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from semseg.errors import ConfigError
from semseg.task.module import SegmentationModule


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents, loaded with ``weights_only=True``.

    A weights-only load unpickles tensors, numbers, strings and containers only, so a checkpoint
    from elsewhere cannot run code when it is opened.

    Raises:
        ConfigError: no such file, not a checkpoint, objects other than weights, or a checkpoint
            without the hyper-parameters semseg saves.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={path}: no such file. A training run keeps its checkpoints in "
            "<run folder>/checkpoints/ (best.ckpt, last.ckpt)."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"ckpt_path={path}: refused to load: the file holds Python objects besides weights, and "
            f"loading them could run code from the file ({str(error).splitlines()[0]})."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ConfigError(
            f"ckpt_path={path}: not a readable PyTorch checkpoint (truncated or another format): {error}"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ConfigError(
            f"ckpt_path={path}: not a semseg training checkpoint (it lacks state_dict or hyper_parameters); "
            "use a checkpoints/*.ckpt file written by scripts/train.py."
        )
    return checkpoint


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
    # fetch pretrained weights (no network here) or read a weights file that may have moved.
    hparams["model"] = {**hparams["model"], "encoder_weights": None}
    module = SegmentationModule(**hparams)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ConfigError(f"ckpt_path={path}: its weights do not fit the model it describes: {error}") from error
    return module.eval()
